"""Pictures people look at: anomaly heat overlays with the verdict written on them (OpenCV only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from npgmf_edge.fileio import atomic_write_bytes
from npgmf_edge.inspection import Inspection

if TYPE_CHECKING:
    from npgmf_edge.calibration.pseudo_anomalies import PseudoAnomaly

MAX_OVERLAY_ALPHA = 0.6
SHEET_COLUMNS = 6


def heat_overlay(image: np.ndarray, anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
    """Blend a JET heat map of `anomaly_map` (clipped to [low, high]) over an RGB uint8 image, weighted by
    the score so only suspicious regions are tinted; single-channel float planes only (bytes per pixel)."""
    if anomaly_map.shape != image.shape[:2]:
        raise ValueError(f"map {anomaly_map.shape} does not match image {image.shape[:2]}")
    scaled = np.subtract(anomaly_map, low, dtype=np.float32)
    scaled /= max(high - low, 1e-12)
    np.clip(scaled, 0.0, 1.0, out=scaled)
    heat_bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat_rgb = cv2.cvtColor(heat_bgr, cv2.COLOR_BGR2RGB)
    alpha = scaled * np.float32(MAX_OVERLAY_ALPHA)
    return cv2.blendLinear(image, heat_rgb, 1.0 - alpha, alpha)


def inspection_overlay(image: np.ndarray, inspection: Inspection, low: float, high: float) -> np.ndarray:
    """Heat overlay plus the threshold contour and a caption with score and verdict."""
    picture = heat_overlay(image, inspection.anomaly_map, low, high)
    above = (inspection.anomaly_map > inspection.threshold).astype(np.uint8)
    contours, _ = cv2.findContours(above, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, (255, 255, 255), 1)
    colour = (255, 60, 60) if inspection.is_anomalous else (60, 220, 60)
    caption = f"{inspection.verdict} {inspection.score:.2f} (t={inspection.threshold:.2f})"
    _label(picture, caption, colour, max(image.shape[1] / 640.0, 0.35))
    return picture


def _label(picture: np.ndarray, text: str, colour: tuple[int, int, int], scale: float) -> None:
    """Write `text` in the top-left corner, wholly inside the picture (placed by its measured size) on a
    black box so it reads on bright and dark parts alike."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    (width, height), baseline = cv2.getTextSize(text, font, scale, 1)
    cv2.rectangle(picture, (0, 0), (width + 6, height + baseline + 6), (0, 0, 0), cv2.FILLED)
    cv2.putText(picture, text, (3, height + 3), font, scale, colour, 1, cv2.LINE_AA)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB image as PNG atomically (a full disk leaves no truncated picture, `fileio.atomic_write`);
    OSError naming the file when it cannot be encoded or written."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode {path} as PNG")
    atomic_write_bytes(Path(path), encoded.tobytes())


def pseudo_anomaly_sheet(pseudo: Sequence[PseudoAnomaly], count: int = 2 * SHEET_COLUMNS) -> np.ndarray:
    """A grid of the first pseudo-anomalies of each kind (up to `count`), the changed region outlined in
    white and the kind written on each, so a person can judge what the fusion was chosen on."""
    by_kind: dict[str, list[PseudoAnomaly]] = {}
    for item in pseudo:
        by_kind.setdefault(item.kind, []).append(item)
    order: list[PseudoAnomaly] = []
    for rank in range(max((len(items) for items in by_kind.values()), default=0)):
        order.extend(items[rank] for items in by_kind.values() if rank < len(items))
    order = order[:count]
    tiles = []
    for item in order:
        tile = item.image.copy()
        contours, _ = cv2.findContours(item.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(tile, contours, -1, (255, 255, 255), 1)
        _label(tile, item.kind, (255, 255, 0), max(tile.shape[1] / 320.0, 0.3))
        tiles.append(tile)
    if not tiles:
        raise ValueError("no pseudo-anomalies to draw")
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % SHEET_COLUMNS)
    rows = [np.hstack(tiles[i : i + SHEET_COLUMNS]) for i in range(0, len(tiles), SHEET_COLUMNS)]
    return np.vstack(rows)
