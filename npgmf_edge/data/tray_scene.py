"""Procedural tray scenes whose rules only context reveals, in the spirit of MVTec LOCO AD.

A light tray is divided into three compartments; each holds a fixed number of parts of one shape and
colour (left: 2 orange discs, top right: 3 blue squares, bottom right: 1 green bar). Parts sit in a
random subset of their compartment's slots, with jitter in position, tilt, size and colour, under a
random lighting gradient and sensor noise: every good image differs, every good image obeys the rules.

Logical anomalies break one rule with locally normal-looking parts: a part missing (the mask is the
compartment it is missing from), an extra part, two compartments' colours swapped (one mask per
compartment), a part in the wrong compartment. Structural anomalies are local damage: a scratch, a
stain, a chip bitten out of a part's edge. Geometry is in fractions of the image side, so every size
renders the same scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

Colour = tuple[int, int, int]  # RGB

TRAY_OUTER = (0.03, 0.97)  # tray edge, fraction of the image side
TABLE_RGB: Colour = (92, 90, 86)
TRAY_RGB: Colour = (226, 221, 211)
WALL_RGB: Colour = (188, 182, 171)
ORANGE: Colour = (232, 126, 36)
BLUE: Colour = (46, 96, 206)
GREEN: Colour = (56, 166, 76)
SLOT_MARGIN = 0.01  # free space kept between a part and its slot's edge
MAX_SCALE = 1.05  # parts vary in size by +-5 %
COLOUR_JITTER = 8  # per channel, in grey levels
NOISE_SIGMA = 2.0  # sensor noise, in grey levels
SHIFT = 4  # OpenCV drawing with 4 fractional bits: sub-pixel positions at every image size
STAIN_RGB: Colour = (112, 72, 36)
SCRATCH_RGB: Colour = (52, 48, 44)


@dataclass(frozen=True)
class PartKind:
    """A part's shape and nominal size (fractions of the image side) and its normal tilt range."""

    name: str  # "disc" | "square" | "bar"
    width: float
    height: float
    max_tilt: float  # degrees

    def half_extent(self) -> tuple[float, float]:
        """Half the bounding box of the largest, most tilted instance: what a slot must fit."""
        tilt = math.radians(self.max_tilt)
        width, height = self.width * MAX_SCALE, self.height * MAX_SCALE
        if self.name == "disc":
            return width / 2, height / 2
        return (
            (width * math.cos(tilt) + height * math.sin(tilt)) / 2,
            (width * math.sin(tilt) + height * math.cos(tilt)) / 2,
        )

    def area(self, image_size: int) -> int:
        """Nominal area in pixels at `image_size`: the saturation area of a missing part."""
        if self.name == "disc":
            return round(math.pi * (self.width * image_size / 2) ** 2)
        return round(self.width * self.height * image_size**2)


DISC = PartKind("disc", 0.11, 0.11, 0.0)
SQUARE = PartKind("square", 0.075, 0.075, 15.0)
BAR = PartKind("bar", 0.24, 0.055, 5.0)


@dataclass(frozen=True)
class Compartment:
    """One region of the tray and its rule: `count` parts of `kind` in `colour`, placed in grid slots."""

    name: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 of the interior, fractions of the image side
    grid: tuple[int, int]  # slot columns, rows
    kind: PartKind
    count: int
    colour: Colour

    @property
    def n_slots(self) -> int:
        return self.grid[0] * self.grid[1]

    def slot_box(self, slot: int) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = self.box
        columns, rows = self.grid
        width, height = (x1 - x0) / columns, (y1 - y0) / rows
        column, row = slot % columns, slot // columns
        return x0 + column * width, y0 + row * height, x0 + (column + 1) * width, y0 + (row + 1) * height

    def fits(self, kind: PartKind) -> bool:
        """Whether a part of `kind` fits one of this compartment's slots (with margin)."""
        x0, y0, x1, y1 = self.slot_box(0)
        half_width, half_height = kind.half_extent()
        return (x1 - x0) / 2 - half_width >= SLOT_MARGIN and (y1 - y0) / 2 - half_height >= SLOT_MARGIN


COMPARTMENTS = (
    Compartment("left", (0.06, 0.06, 0.485, 0.94), (2, 3), DISC, 2, ORANGE),
    Compartment("top_right", (0.515, 0.06, 0.94, 0.485), (3, 2), SQUARE, 3, BLUE),
    Compartment("bottom_right", (0.515, 0.515, 0.94, 0.94), (1, 3), BAR, 1, GREEN),
)


@dataclass(frozen=True)
class Part:
    """One placed part; `compartment` and `slot` say where it sits, not where it belongs."""

    kind: PartKind
    centre: tuple[float, float]  # fractions of the image side
    angle: float  # degrees
    scale: float
    colour: Colour
    compartment: int
    slot: int


@dataclass(frozen=True)
class Annotation:
    """One defect region of a logical anomaly: the union of some parts, or a whole compartment."""

    defect_name: str
    parts: tuple[Part, ...] = ()
    compartment: Compartment | None = None


def _jitter_colour(rng: np.random.Generator, colour: Colour) -> Colour:
    shifted = np.clip(np.asarray(colour) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3), 0, 255)
    return tuple(int(c) for c in shifted)  # type: ignore[return-value]


def _place(
    rng: np.random.Generator, kind: PartKind, compartment_index: int, slot: int, colour: Colour
) -> Part:
    """A part of `kind` at a jittered position inside `slot` of a compartment it fits."""
    x0, y0, x1, y1 = COMPARTMENTS[compartment_index].slot_box(slot)
    half_width, half_height = kind.half_extent()
    free_x = (x1 - x0) / 2 - half_width - SLOT_MARGIN
    free_y = (y1 - y0) / 2 - half_height - SLOT_MARGIN
    centre = ((x0 + x1) / 2 + rng.uniform(-free_x, free_x), (y0 + y1) / 2 + rng.uniform(-free_y, free_y))
    return Part(
        kind=kind,
        centre=centre,
        angle=float(rng.uniform(-kind.max_tilt, kind.max_tilt)),
        scale=float(rng.uniform(2 - MAX_SCALE, MAX_SCALE)),
        colour=_jitter_colour(rng, colour),
        compartment=compartment_index,
        slot=slot,
    )


def sample_good_scene(rng: np.random.Generator) -> list[Part]:
    """Parts of a scene that obeys every rule."""
    parts = []
    for index, compartment in enumerate(COMPARTMENTS):
        slots = sorted(int(s) for s in rng.choice(compartment.n_slots, size=compartment.count, replace=False))
        parts.extend(_place(rng, compartment.kind, index, slot, compartment.colour) for slot in slots)
    return parts


def _free_slots(parts: list[Part], compartment_index: int) -> list[int]:
    used = {p.slot for p in parts if p.compartment == compartment_index}
    return [s for s in range(COMPARTMENTS[compartment_index].n_slots) if s not in used]


def _missing_part(rng: np.random.Generator, parts: list[Part]) -> tuple[list[Part], list[Annotation]]:
    """One part removed; the whole compartment is the defect region (where the part should have been)."""
    index = int(rng.integers(len(COMPARTMENTS)))
    members = [i for i, p in enumerate(parts) if p.compartment == index]
    removed = members[int(rng.integers(len(members)))]
    compartment = COMPARTMENTS[index]
    remaining = [p for i, p in enumerate(parts) if i != removed]
    return remaining, [Annotation(f"missing_{compartment.kind.name}", compartment=compartment)]


def _extra_part(rng: np.random.Generator, parts: list[Part]) -> tuple[list[Part], list[Annotation]]:
    """One more part of the right kind and colour in a free slot of its own compartment."""
    index = int(rng.integers(len(COMPARTMENTS)))
    compartment = COMPARTMENTS[index]
    slot = int(rng.choice(_free_slots(parts, index)))
    extra = _place(rng, compartment.kind, index, slot, compartment.colour)
    return [*parts, extra], [Annotation("extra_part", parts=(extra,))]


def _swapped_colours(rng: np.random.Generator, parts: list[Part]) -> tuple[list[Part], list[Annotation]]:
    """The colours of two compartments exchanged; one defect region per compartment."""
    first, second = (int(i) for i in rng.choice(len(COMPARTMENTS), size=2, replace=False))
    swap = {first: COMPARTMENTS[second].colour, second: COMPARTMENTS[first].colour}
    parts = [
        replace(p, colour=_jitter_colour(rng, swap[p.compartment])) if p.compartment in swap else p
        for p in parts
    ]
    annotations = [
        Annotation("swapped_colours", parts=tuple(p for p in parts if p.compartment == index))
        for index in (first, second)
    ]
    return parts, annotations


def _misplaced_part(rng: np.random.Generator, parts: list[Part]) -> tuple[list[Part], list[Annotation]]:
    """One part moved into a free slot of another compartment that it fits (bars fit only their own)."""
    moves = [
        (part_index, target)
        for part_index, part in enumerate(parts)
        for target, compartment in enumerate(COMPARTMENTS)
        if target != part.compartment and compartment.fits(part.kind) and _free_slots(parts, target)
    ]
    part_index, target = moves[int(rng.integers(len(moves)))]
    original = parts[part_index]
    remaining = [p for i, p in enumerate(parts) if i != part_index]
    slot = int(rng.choice(_free_slots(remaining, target)))
    moved = replace(_place(rng, original.kind, target, slot, original.colour), colour=original.colour)
    return [*remaining, moved], [Annotation("misplaced_part", parts=(moved,))]


RULE_BREAKERS = {
    "missing_part": _missing_part,
    "extra_part": _extra_part,
    "swapped_colours": _swapped_colours,
    "misplaced_part": _misplaced_part,
}
LOGICAL_ANOMALIES = tuple(RULE_BREAKERS)


def break_rule(
    rng: np.random.Generator, parts: list[Part], anomaly: str
) -> tuple[list[Part], list[Annotation]]:
    """Apply one logical anomaly (a LOGICAL_ANOMALIES name) to a good scene; returns parts and regions."""
    return RULE_BREAKERS[anomaly](rng, parts)


def _fixed(value: float, image_size: int) -> int:
    """A coordinate in fractions of the image side as OpenCV fixed-point pixels (SHIFT fractional bits)."""
    return round(value * image_size * (1 << SHIFT))


def _draw_part(canvas: np.ndarray, part: Part, image_size: int, value: int, line_type: int) -> None:
    """Fill `part`'s shape into `canvas` with `value` (LINE_AA for pictures, LINE_8 for masks)."""
    centre = (_fixed(part.centre[0], image_size), _fixed(part.centre[1], image_size))
    if part.kind.name == "disc":
        radius = _fixed(part.kind.width * part.scale / 2, image_size)
        cv2.circle(canvas, centre, radius, value, thickness=-1, lineType=line_type, shift=SHIFT)
        return
    size = (part.kind.width * part.scale * image_size, part.kind.height * part.scale * image_size)
    corners = cv2.boxPoints((tuple(c / (1 << SHIFT) for c in centre), size, part.angle))
    fixed_corners = np.round(corners * (1 << SHIFT)).astype(np.int32)
    cv2.fillPoly(canvas, [fixed_corners], value, lineType=line_type, shift=SHIFT)


def part_footprint(part: Part, image_size: int) -> np.ndarray:
    """(S, S) bool: the pixels a part covers (used for masks and for chips)."""
    canvas = np.zeros((image_size, image_size), dtype=np.uint8)
    _draw_part(canvas, part, image_size, 255, cv2.LINE_8)
    return canvas > 0


def annotation_mask(annotation: Annotation, image_size: int) -> np.ndarray:
    """(S, S) bool region of one logical defect."""
    mask = np.zeros((image_size, image_size), dtype=bool)
    if annotation.compartment is not None:
        x0, y0, x1, y1 = (round(v * image_size) for v in annotation.compartment.box)
        mask[y0:y1, x0:x1] = True
    for part in annotation.parts:
        mask |= part_footprint(part, image_size)
    return mask


def render_tray(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """(S, S, 3) float32 RGB of the empty tray and its walls, with a small brightness variation."""
    size = image_size
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = TABLE_RGB
    lo, hi = (round(v * size) for v in TRAY_OUTER)
    brightness = rng.uniform(0.96, 1.04)
    image[lo:hi, lo:hi] = np.asarray(WALL_RGB, dtype=np.float32) * brightness
    for x0, y0, x1, y1 in (c.box for c in COMPARTMENTS):
        image[round(y0 * size) : round(y1 * size), round(x0 * size) : round(x1 * size)] = (
            np.asarray(TRAY_RGB, dtype=np.float32) * brightness
        )
    return image


def render_parts(tray: np.ndarray, parts: list[Part]) -> np.ndarray:
    """The tray with soft shadows and anti-aliased, outlined parts drawn on it."""
    size = tray.shape[0]
    shadow = np.zeros((size, size), dtype=np.uint8)
    for part in parts:
        offset = replace(part, centre=(part.centre[0] + 0.006, part.centre[1] + 0.009))
        _draw_part(shadow, offset, size, 255, cv2.LINE_AA)
    shadow_alpha = cv2.GaussianBlur(shadow.astype(np.float32) / 255.0, (0, 0), max(0.6, 0.008 * size))
    image = tray * (1.0 - 0.3 * shadow_alpha[:, :, None])
    for part in parts:
        coverage = np.zeros((size, size), dtype=np.uint8)
        _draw_part(coverage, part, size, 255, cv2.LINE_AA)
        alpha = coverage.astype(np.float32)[:, :, None] / 255.0
        edge = cv2.morphologyEx(coverage, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(np.float32)
        colour = np.asarray(part.colour, dtype=np.float32)
        image = image * (1.0 - alpha) + colour * alpha
        image *= 1.0 - 0.25 * edge[:, :, None] / 255.0  # a darker rim makes parts read as objects
    return image


def _scratch(
    rng: np.random.Generator, image: np.ndarray, tray: np.ndarray, parts: list[Part]
) -> tuple[np.ndarray, np.ndarray]:
    """A thin dark two-segment line starting near a part; the mask is the line, 1 px wider each side."""
    size = image.shape[0]
    start = np.asarray(parts[int(rng.integers(len(parts)))].centre) + rng.uniform(-0.05, 0.05, size=2)
    heading = rng.uniform(0, 2 * math.pi)
    points = [start]
    for _ in range(2):
        heading += rng.uniform(-0.5, 0.5)
        step = rng.uniform(0.07, 0.13) * np.array([math.cos(heading), math.sin(heading)])
        points.append(points[-1] + step)
    polyline = np.round(np.clip(points, 0.04, 0.96) * size * (1 << SHIFT)).astype(np.int32)
    thickness = max(1, round(size / 160))
    ink = np.zeros((size, size), dtype=np.uint8)
    cv2.polylines(ink, [polyline], False, 255, thickness, cv2.LINE_AA, shift=SHIFT)
    mask = np.zeros((size, size), dtype=np.uint8)
    cv2.polylines(mask, [polyline], False, 255, thickness + 2, cv2.LINE_8, shift=SHIFT)
    alpha = 0.85 * ink.astype(np.float32)[:, :, None] / 255.0
    return image * (1.0 - alpha) + np.asarray(SCRATCH_RGB, dtype=np.float32) * alpha, mask > 0


def _stain(
    rng: np.random.Generator, image: np.ndarray, tray: np.ndarray, parts: list[Part]
) -> tuple[np.ndarray, np.ndarray]:
    """A soft brown blob anywhere on the tray; the mask is where it visibly tints the image."""
    size = image.shape[0]
    lo, hi = TRAY_OUTER[0] + 0.08, TRAY_OUTER[1] - 0.08
    centre = tuple(_fixed(v, size) for v in rng.uniform(lo, hi, size=2))
    axes = (_fixed(rng.uniform(0.035, 0.06), size), _fixed(rng.uniform(0.025, 0.045), size))
    blob = np.zeros((size, size), dtype=np.uint8)
    cv2.ellipse(blob, centre, axes, rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA, shift=SHIFT)
    alpha = 0.65 * cv2.GaussianBlur(blob.astype(np.float32) / 255.0, (0, 0), max(0.6, 0.012 * size))
    tint = alpha[:, :, None]
    return image * (1.0 - tint) + np.asarray(STAIN_RGB, dtype=np.float32) * tint, alpha > 0.2


def _chip(
    rng: np.random.Generator, image: np.ndarray, tray: np.ndarray, parts: list[Part]
) -> tuple[np.ndarray, np.ndarray]:
    """A round bite out of a part's edge, showing the tray beneath; the mask is the bitten-off piece."""
    size = image.shape[0]
    part = parts[int(rng.integers(len(parts)))]
    edge_x, edge_y = _edge_point(part, rng.uniform(0, 2 * math.pi))
    radius = max(_fixed(0.35 * min(part.kind.width, part.kind.height) * part.scale, size), 2 << SHIFT)
    bite = np.zeros((size, size), dtype=np.uint8)
    cv2.circle(bite, (_fixed(edge_x, size), _fixed(edge_y, size)), radius, 255, -1, cv2.LINE_8, shift=SHIFT)
    mask = part_footprint(part, size) & (bite > 0)
    chipped = image.copy()
    chipped[mask] = tray[mask]
    return chipped, mask


DAMAGES = {"scratch": _scratch, "stain": _stain, "chip": _chip}
STRUCTURAL_ANOMALIES = tuple(DAMAGES)


def damage(
    rng: np.random.Generator, image: np.ndarray, tray: np.ndarray, parts: list[Part], anomaly: str
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one structural anomaly (a STRUCTURAL_ANOMALIES name); returns the image and its bool mask."""
    return DAMAGES[anomaly](rng, image, tray, parts)


def _edge_point(part: Part, direction: float) -> tuple[float, float]:
    """Where a ray from the part's centre at `direction` (radians, part frame) leaves its outline."""
    half_width = part.kind.width * part.scale / 2
    half_height = part.kind.height * part.scale / 2
    if part.kind.name == "disc":
        reach = half_width
    else:
        reach = min(
            half_width / max(abs(math.cos(direction)), 1e-9),
            half_height / max(abs(math.sin(direction)), 1e-9),
        )
    angle = direction + math.radians(part.angle)
    return part.centre[0] + reach * math.cos(angle), part.centre[1] + reach * math.sin(angle)


def finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Lighting gradient and sensor noise, then (S, S, 3) uint8 RGB."""
    size = image.shape[0]
    heading = rng.uniform(0, 2 * math.pi)
    strength = rng.uniform(0.03, 0.07)
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    gradient = 1.0 + strength * (axis[None, :] * math.cos(heading) + axis[:, None] * math.sin(heading))
    noisy = image * gradient[:, :, None] + rng.normal(0.0, NOISE_SIGMA, size=image.shape).astype(np.float32)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)
