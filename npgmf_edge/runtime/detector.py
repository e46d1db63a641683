"""A bundle behind the detector interface (`inspection.MapDetector`), so `predict`, `evaluate` and `verify`
take a bundle where they take a run; it runs the torch-free `Inspector`.

Example:
    >>> with BundleDetector(Inspector.open(Path("bundle"), precision="fp32")) as detector:
    ...     maps = detector.maps(pixels)   # structural, logical, fused (N, S, S) and score (N,)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from npgmf_edge.calibration import Calibration
from npgmf_edge.data import read_image
from npgmf_edge.inspection import Closing, ImageInput, Inspection, batched_maps, concat_batches, scored_maps
from npgmf_edge.progress import Reporter
from npgmf_edge.runtime.inspector import Inspector


class BundleDetector(Closing):
    """One opened precision of a bundle (`Inspector`) as a `MapDetector`."""

    def __init__(self, inspector: Inspector) -> None:
        self.inspector = inspector

    @property
    def calibration(self) -> Calibration:
        return self.inspector.calibration

    def inspect(self, images: Sequence[ImageInput], progress: bool = False) -> list[Inspection]:
        step = self.inspector.manifest.max_batch * 4
        results: list[Inspection] = []
        with Reporter("inspecting", len(images), unit="images", enabled=progress) as report:
            for start in range(0, len(images), step):
                chunk = list(images[start : start + step])
                results.extend(self.inspector.inspect(chunk))
                report.advance(len(chunk))
        return results

    def maps(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 3, S, S) float32 pixels -> raw branch maps, fused map and score, a max batch at a time."""
        step = self.inspector.manifest.max_batch
        return concat_batches(self.inspector.run(pixels[i : i + step]) for i in range(0, len(pixels), step))

    def maps_and_sizes(
        self, image_paths: Sequence[Path], progress: bool = False
    ) -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]:
        """`maps` of image files (read a max batch at a time) and each one's original (height, width)."""
        step, size = self.inspector.manifest.max_batch, self.inspector.image_size
        images = (read_image(p) for p in image_paths)
        return batched_maps(images, len(image_paths), step, size, self.maps, progress)

    def scored_maps(self, maps: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Smoothed branch maps beside the bundle's own fused map, and their image scores (the fused one's
        as the bundle computed it): what evaluation scores."""
        return scored_maps(maps, self.calibration.gaussian_sigma)

    def answered_by(self) -> dict[str, str | None]:
        """Which bundle graph answered, and why it is not the one asked for (a self-test fallback)."""
        return {
            "precision": self.inspector.precision,
            "requested_precision": self.inspector.requested_precision,
            "fallback_reason": self.inspector.fallback_reason,
        }

    def close(self) -> None:
        self.inspector.close()
