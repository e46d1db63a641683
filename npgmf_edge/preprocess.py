"""The one pre-processing function every backend shares (torch training, onnxruntime, TensorRT).

Only resizing and layout happen here; normalisation lives inside the networks (`ImageNormalize`) so
the exported graphs take raw pixels. Needs numpy and OpenCV only, so the runtime can import it.
"""

from __future__ import annotations

import cv2
import numpy as np


def to_model_input(image: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 image (H, W, 3) -> float32 (3, size, size) with pixels in [0, 255].

    INTER_AREA when shrinking (no aliasing), INTER_LINEAR when enlarging.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    shrinking = size < height or size < width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (size, size), interpolation=interpolation)
    return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32)


def map_to_image_size(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a (size, size) float map back to an original image's (height, width), bilinearly."""
    return cv2.resize(anomaly_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
