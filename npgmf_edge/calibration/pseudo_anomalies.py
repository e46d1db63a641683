"""Pseudo-anomalies made from normal validation images, to choose the fusion at calibration (never from test
images; the same seed gives the same images).

Structural-like: "perlin", a Perlin-noise mask blending a foreign texture in (DRAEM, Zavrtanik et al. ICCV
2021; anomalib's `PerlinAnomalyGenerator`: mask = rotated noise > 0.5, out = (1 - beta) texture + beta
image, beta in [0, 0.8), lattice cells of at least `MIN_PERLIN_CELL` px); "scar", a thin stroke of a
contrasting colour (CutPaste's); "blotch", a soft-edged ellipse of another colour. Logical-like:
"transplant", one object-sized region where another validation image differs from this one, copied in from
it (CutPaste between images, its region bounded by where the two images agree, so its edges are normal:
a part appears or disappears, a count changes); and on the most textured of a few object-sized square
regions, "move" (pasted elsewhere, its place inpainted; CutPaste, Li et al. CVPR 2021), "duplicate"
(pasted elsewhere as well), "remove" (inpainted away, Telea). Measured on make-data (BENCHMARKS, "Pseudo-
anomalies that look like logical ones"), the structural branch finds the square-region kinds as surely as
scars (AUROC 0.95-1.00) but transplants about as well as it finds real logical anomalies; so transplants
are half of the logical-like family (`LOGICAL_CYCLE`).

`perlin_noise` transcribes DRAEM's gradient noise (random unit gradients on a lattice, quintic fade): no
maintained PyPI package implements it (`noise` is unmaintained since 2015, others compute other noises).

Example:
    >>> images = make_pseudo_anomalies(validation_images, seed=0)   # RGB uint8 (H, W, 3) each
    >>> images[0].kind, images[0].image.shape
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

STRUCTURAL_KINDS = ("perlin", "scar", "blotch")
LOGICAL_KINDS = ("transplant", "move", "duplicate", "remove")
LOGICAL_CYCLE = ("transplant", "move", "transplant", "duplicate", "transplant", "remove")
KINDS = STRUCTURAL_KINDS + LOGICAL_KINDS
PERLIN_THRESHOLD = 0.5  # DRAEM: the noise (range about [-1, 1]) above this is the anomaly mask
PERLIN_SCALE_EXPONENTS = (0, 6)  # DRAEM: lattice periods 2^k per side, k uniform in [0, 6) ...
MIN_PERLIN_CELL = 16  # ... but cells of at least this many pixels: at 128 px DRAEM's finest 4 px cells
# made a speckle over the whole image rather than a defect
BETA = (0.0, 0.8)  # DRAEM: share of the original image kept inside the mask, uniform in [0, 0.8)
COLOUR_SHIFT = (60.0, 140.0)  # scar and blotch: distance of their colour from the local mean colour
BLOTCH_ALPHA = (0.6, 0.9)  # blotch: opacity of its colour at the centre
BLOTCH_AXIS = (0.04, 0.12)  # blotch: semi-axes as a fraction of the image side
REGION_SIDE = (0.15, 0.3)  # logical kinds: region side as a fraction of the image side
REGION_TRIES = 8  # random candidate regions; the most textured one is used
MAX_MASK_TRIES = 10
# A maker: (validation images, index of the one to alter, rng) -> (image, mask), or None when it cannot
# make its kind from these images.
Maker = Callable[[Sequence[np.ndarray], int, np.random.Generator], tuple[np.ndarray, np.ndarray] | None]
TRANSPLANT_DIFFERENCE = 30.0  # grey levels (max over channels, smoothed) where two images count as different,
TRANSPLANT_PERCENTILE = 90  # ... or this percentile of it where higher (textures differ everywhere)
TRANSPLANT_AREA = (0.08**2, 0.45**2)  # a transplanted region's area, as a fraction of the image's
TRANSPLANT_PARTNERS = 8  # other validation images tried for one with a difference of that size
TRANSPLANT_FALLBACK = "move"  # made instead when no partner has one
FEATHER_SIGMA = 1.5  # px: the soft edge of a transplant ...
FEATHER_MARGIN = 5  # px: ... set this far outside the differing region, so all of it is copied whole


@dataclass(frozen=True)
class PseudoAnomaly:
    """One pseudo-anomalous image, what was done to it, where (mask), and which validation image it came
    from."""

    image: np.ndarray  # RGB uint8 (H, W, 3)
    mask: np.ndarray  # bool (H, W)
    kind: str
    source: int

    @property
    def family(self) -> str:
        return "structural" if self.kind in STRUCTURAL_KINDS else "logical"


def fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3: 0 and 1 at the lattice, flat first and second derivative
    there."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], periods: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient noise: `periods` lattice cells along (rows, cols), a random unit gradient at each lattice
    point; zero on the lattice, scaled by sqrt(2) to span about [-1, 1] (DRAEM's `rand_perlin_2d_np`)."""
    height, width = shape
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(periods[0] + 1, periods[1] + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y = np.arange(height) * periods[0] / height
    x = np.arange(width) * periods[1] / width
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = gradients[(y0 + dy)[:, None], (x0 + dx)[None, :]]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    ty, tx = fade(fy), fade(fx)
    top = corner(0, 0) + tx * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + tx * (corner(1, 1) - corner(1, 0))
    return np.sqrt(2.0) * (top + ty * (bottom - top))


def _perlin_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    low, high = PERLIN_SCALE_EXPONENTS
    high = max(low + 1, min(high, int(np.log2(max(min(shape) // MIN_PERLIN_CELL, 1))) + 1))
    for _ in range(MAX_MASK_TRIES):
        periods = (2 ** int(rng.integers(low, high)), 2 ** int(rng.integers(low, high)))
        noise = perlin_noise(shape, periods, rng).astype(np.float32)
        center = (shape[1] / 2.0, shape[0] / 2.0)
        rotation = cv2.getRotationMatrix2D(center, float(rng.uniform(-90, 90)), 1.0)
        noise = cv2.warpAffine(noise, rotation, (shape[1], shape[0]), borderMode=cv2.BORDER_REFLECT)
        mask = noise > PERLIN_THRESHOLD
        if mask.any():
            return mask
    return _ellipse_mask(shape, rng)  # a run of empty masks: a blob of the same size class instead


def _ellipse_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    height, width = shape
    mask = np.zeros(shape, np.uint8)
    center = (
        int(rng.integers(width // 8, width - width // 8)),
        int(rng.integers(height // 8, height - height // 8)),
    )
    axes = (max(2, int(rng.uniform(*BLOTCH_AXIS) * width)), max(2, int(rng.uniform(*BLOTCH_AXIS) * height)))
    cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    return mask.astype(bool)


def _texture(images: Sequence[np.ndarray], index: int, rng: np.random.Generator) -> np.ndarray:
    """A foreign texture of the same size: another validation image, rotated, its channels permuted and
    its contrast changed (DRAEM blends DTD textures, which a station does not have)."""
    other = images[(index + 1 + int(rng.integers(0, max(1, len(images) - 1)))) % len(images)]
    other = cv2.resize(other, images[index].shape[1::-1], interpolation=cv2.INTER_AREA)
    other = np.rot90(other, k=int(rng.integers(1, 4)))
    other = cv2.resize(np.ascontiguousarray(other), images[index].shape[1::-1])
    gain = rng.uniform(0.5, 1.5)
    return np.clip(other[..., rng.permutation(3)] * gain + rng.uniform(-40, 40), 0, 255)


def _perlin(
    images: Sequence[np.ndarray], index: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    image = images[index].astype(np.float32)
    mask = _perlin_mask(image.shape[:2], rng)
    beta = rng.uniform(*BETA)
    blended = (1.0 - beta) * _texture(images, index, rng) + beta * image
    out = np.where(mask[..., None], blended, image)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


def _contrasting_colour(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour far from the mean colour under `mask`, so the mark is visible but not always saturated."""
    local = image[mask].mean(axis=0) if mask.any() else image.reshape(-1, 3).mean(axis=0)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-9
    colour = local + rng.uniform(*COLOUR_SHIFT) * direction
    return np.clip(colour, 0, 255)


def _scar(
    images: Sequence[np.ndarray], index: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    image = images[index].copy()
    height, width = image.shape[:2]
    start = np.array([rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height])
    angle = rng.uniform(0, 2 * np.pi)
    points = [start]
    for _ in range(int(rng.integers(2, 5))):  # a few segments, each bending a little
        angle += rng.uniform(-0.6, 0.6)
        step = rng.uniform(0.04, 0.1) * max(height, width)
        points.append(points[-1] + step * np.array([np.cos(angle), np.sin(angle)]))
    polyline = np.clip(np.array(points), 0, [width - 1, height - 1]).astype(np.int32)
    mask = np.zeros((height, width), np.uint8)
    thickness = max(1, round(rng.uniform(0.008, 0.02) * max(height, width)))
    cv2.polylines(mask, [polyline], False, 1, thickness=thickness)
    region = mask.astype(bool)
    image[region] = _contrasting_colour(image, region, rng).astype(np.uint8)
    return image, region


def _blotch(
    images: Sequence[np.ndarray], index: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    image = images[index].astype(np.float32)
    mask = _ellipse_mask(image.shape[:2], rng)
    colour = _contrasting_colour(image, mask, rng)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(1.0, 0.01 * image.shape[1]))
    alpha = rng.uniform(*BLOTCH_ALPHA) * soft[..., None]
    out = (1.0 - alpha) * image + alpha * colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), soft > 0.5


def _region(image: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """(top, left, side) of a square region of object size: the most textured of a few random candidates."""
    height, width = image.shape[:2]
    side = max(4, int(rng.uniform(*REGION_SIDE) * min(height, width)))
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    best, best_energy = (0, 0), -1.0
    for _ in range(REGION_TRIES):
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        energy = float(grey[top : top + side, left : left + side].std())
        if energy > best_energy:
            best, best_energy = (top, left), energy
    return best[0], best[1], side


def _elsewhere(
    shape: tuple[int, int], top: int, left: int, side: int, rng: np.random.Generator
) -> tuple[int, int]:
    """A destination for a region of `side` that overlaps its source as little as a few tries allow."""
    height, width = shape
    best, best_overlap = (top, left), side * side + 1
    for _ in range(REGION_TRIES):
        t, lft = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        overlap = max(0, side - abs(t - top)) * max(0, side - abs(lft - left))
        if overlap < best_overlap:
            best, best_overlap = (t, lft), overlap
    return best


def _inpaint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    radius = max(3, int(0.02 * max(image.shape[:2])))
    return cv2.inpaint(image, mask.astype(np.uint8), radius, cv2.INPAINT_TELEA)


def _transplant(
    images: Sequence[np.ndarray], index: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """One connected region where another image differs from this one (both normal), copied in from it
    with a soft edge outside it: a part present in one image and not the other becomes a part added or
    removed. None when no partner differs by a region of object size (one image, or identical ones)."""
    image = images[index].astype(np.float32)
    height, width = image.shape[:2]
    others = [j for j in range(len(images)) if j != index and images[j].shape == image.shape]
    low, high = (fraction * height * width for fraction in TRANSPLANT_AREA)
    for j in rng.permutation(others)[:TRANSPLANT_PARTNERS] if others else ():
        other = images[int(j)]
        difference = np.abs(image - other).max(axis=2)
        difference = cv2.GaussianBlur(difference, (0, 0), max(1.0, 0.01 * width))
        level = max(TRANSPLANT_DIFFERENCE, float(np.percentile(difference, TRANSPLANT_PERCENTILE)))
        differs = cv2.morphologyEx(
            (difference > level).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8)
        )
        count, labels, stats, _ = cv2.connectedComponentsWithStats(differs, connectivity=8)
        sized = [k for k in range(1, count) if low <= stats[k, cv2.CC_STAT_AREA] <= high]
        if not sized:
            continue
        region = (labels == sized[int(rng.integers(len(sized)))]).astype(np.uint8)
        margin = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * FEATHER_MARGIN + 1,) * 2)
        alpha = cv2.GaussianBlur(cv2.dilate(region, margin).astype(np.float32), (0, 0), FEATHER_SIGMA)
        out = (1.0 - alpha[..., None]) * image + alpha[..., None] * other
        return np.clip(np.rint(out), 0, 255).astype(np.uint8), alpha > 1e-3  # below: < 0.3 grey levels
    return None


def _logical(kind: str) -> Maker:
    def make(
        images: Sequence[np.ndarray], index: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        image = images[index]
        top, left, side = _region(image, rng)
        source = np.zeros(image.shape[:2], bool)
        source[top : top + side, left : left + side] = True
        patch = image[top : top + side, left : left + side].copy()
        out = _inpaint(image, source) if kind in ("move", "remove") else image.copy()
        mask = source.copy() if kind != "duplicate" else np.zeros_like(source)
        if kind in ("move", "duplicate"):
            t, lft = _elsewhere(image.shape[:2], top, left, side, rng)
            out[t : t + side, lft : lft + side] = patch
            mask[t : t + side, lft : lft + side] = True
        return out, mask

    return make


MAKERS: dict[str, Maker] = {
    "perlin": _perlin,
    "scar": _scar,
    "blotch": _blotch,
    "transplant": _transplant,
    **{kind: _logical(kind) for kind in ("move", "duplicate", "remove")},
}


def make_pseudo_anomalies(images: Sequence[np.ndarray], seed: int, per_image: int = 2) -> list[PseudoAnomaly]:
    """`per_image` pseudo-anomalies from each RGB uint8 image, alternating structural-like and logical-like
    kinds and cycling through `STRUCTURAL_KINDS` and `LOGICAL_CYCLE`; deterministic for a given seed and
    image list."""
    if per_image < 1:
        raise ValueError(f"per_image must be >= 1, got {per_image}")
    rng = np.random.default_rng(seed)
    out = []
    for index in range(len(images)):
        for k in range(per_image):
            n = index * per_image + k
            cycle = STRUCTURAL_KINDS if n % 2 == 0 else LOGICAL_CYCLE
            kind = cycle[(n // 2) % len(cycle)]
            made = MAKERS[kind](images, index, rng)
            if made is None:  # a transplant needs a partner image that differs by an object-sized region
                kind = TRANSPLANT_FALLBACK
                made = MAKERS[kind](images, index, rng)
            image, mask = made
            out.append(PseudoAnomaly(image, mask, kind, index))
    return out
