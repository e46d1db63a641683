"""npgmf-edge: anomaly inspection from good images only, built for edge GPUs.

Two branches (SPEC §2): a reverse-distillation logical branch guided by a CLIP text prior and
vector-quantised normal codebooks (NPGMF, Xu et al. 2025), and a PatchCore structural branch.

Importing the package sets OpenCV's own decoding limit (`OPENCV_IO_MAX_IMAGE_PIXELS`, unless the
environment already sets it): OpenCV reads it once, when `cv2` is first imported, so it is set here, before
any module of the package imports `cv2`. It is the second wall behind the header checks of
`data.image_io` (docs/RELIABILITY.md).
"""

import os
import sys

__version__ = "0.1.0"

OPENCV_PIXEL_WALL = 256_000_000  # 16 x the default --max-pixels: the most any decode here may claim
# Whether OpenCV's limit is the one the environment holds now (False: cv2 was imported before us).
OPENCV_WALL_SET_BEFORE_IMPORT = "cv2" not in sys.modules
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(OPENCV_PIXEL_WALL))
