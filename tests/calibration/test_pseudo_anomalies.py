"""Pseudo-anomalies: the Perlin transcription against hand-computed values, determinism, and that each kind
changes its image only where its mask says."""

import cv2
import numpy as np
import pytest

from npgmf_edge.calibration.pseudo_anomalies import (
    KINDS,
    LOGICAL_KINDS,
    STRUCTURAL_KINDS,
    fade,
    make_pseudo_anomalies,
    perlin_noise,
)


def _images(n: int = 6, size: int = 64) -> list[np.ndarray]:
    """Textured scenes: a gradient background with a few coloured discs (parts to move or remove)."""
    rng = np.random.default_rng(42)
    out = []
    for _ in range(n):
        ramp = np.linspace(40, 160, size, dtype=np.float32)
        image = np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=-1).astype(np.uint8)
        for _ in range(4):
            centre = tuple(int(v) for v in rng.integers(8, size - 8, 2))
            colour = tuple(int(v) for v in rng.integers(0, 255, 3))
            cv2.circle(image, centre, 6, colour, -1)
        out.append(image)
    return out


def test_fade_is_perlins_quintic_with_flat_ends() -> None:
    t = np.array([0.0, 0.5, 1.0])
    assert np.allclose(fade(t), [0.0, 0.5, 1.0])
    eps = 1e-4  # first derivative 30 t^2 (t - 1)^2 vanishes at both ends
    assert abs(fade(np.array(eps))[()] / eps) < 1e-3
    assert abs((1 - fade(np.array(1 - eps))[()]) / eps) < 1e-3


def test_perlin_noise_is_zero_on_the_lattice_and_bounded() -> None:
    noise = perlin_noise((64, 64), (4, 8), np.random.default_rng(0))
    assert np.allclose(noise[::16, ::8], 0.0)  # lattice rows every 64/4 px, columns every 64/8 px
    assert np.abs(noise).max() <= 1.0 + 1e-9  # sqrt(2) * (unit gradient . offset of length <= sqrt(2)/2)
    assert noise.std() > 0.1


def test_perlin_noise_at_a_cell_centre_is_the_mean_of_the_four_corner_dot_products() -> None:
    # One cell on a 2x2 grid: pixel (1, 1) is the centre, fade(0.5) = 0.5, so bilinear = mean of corners.
    angles = np.random.default_rng(7).uniform(0.0, 2.0 * np.pi, size=(2, 2))
    g = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    corners = [g[0, 0] @ [0.5, 0.5], g[0, 1] @ [0.5, -0.5], g[1, 0] @ [-0.5, 0.5], g[1, 1] @ [-0.5, -0.5]]
    noise = perlin_noise((2, 2), (1, 1), np.random.default_rng(7))
    assert noise[1, 1] == pytest.approx(np.sqrt(2) * np.mean(corners))
    assert noise[0, 0] == 0.0


def test_same_seed_same_pseudo_anomalies_other_seed_others() -> None:
    images = _images()
    first, again = make_pseudo_anomalies(images, seed=3), make_pseudo_anomalies(images, seed=3)
    other = make_pseudo_anomalies(images, seed=4)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again, strict=True))
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(first, other, strict=True))


def test_families_alternate_and_every_kind_is_made() -> None:
    pseudo = make_pseudo_anomalies(_images(6), seed=0, per_image=2)
    assert len(pseudo) == 12
    assert [p.family for p in pseudo[:4]] == ["structural", "logical", "structural", "logical"]
    assert {p.kind for p in pseudo} == set(KINDS)
    assert [p.source for p in pseudo[:4]] == [0, 0, 1, 1]


@pytest.mark.parametrize("kind", STRUCTURAL_KINDS + LOGICAL_KINDS)
def test_each_kind_changes_its_region_and_nothing_far_from_it(kind: str) -> None:
    images = _images()
    pseudo = [p for p in make_pseudo_anomalies(images, seed=1, per_image=6) if p.kind == kind]
    assert pseudo
    for p in pseudo:
        source = images[p.source]
        changed = np.any(p.image != source, axis=-1)
        assert p.mask.any() and changed.any()
        near = cv2.dilate(p.mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        assert not changed[~near].any(), f"{kind} changed pixels away from its mask"
        assert p.image.dtype == np.uint8 and p.image.shape == source.shape


def _tray(slots: list[int], size: int = 64) -> np.ndarray:
    """A grey tray with an orange square part in each of `slots` (0-3, left to right)."""
    image = np.full((size, size, 3), 200, np.uint8)
    for slot in slots:
        left = 4 + slot * 15
        image[26:38, left : left + 12] = (230, 120, 40)
    return image


def _orange_pixels(image: np.ndarray) -> int:
    return int(np.all(image == (230, 120, 40), axis=-1).sum())


def test_a_transplant_adds_or_removes_a_part_from_another_image_and_keeps_the_rest() -> None:
    # Two normal images with two parts each, in slots {0, 1} and {1, 2}: where they differ is slot 0 (a
    # part only in the first) and slot 2 (only in the second), so a transplant into the first removes
    # its part 0 or adds a third part; either way its edges lie where both images are plain tray.
    images = [_tray([0, 1]), _tray([1, 2])]
    pseudo = [p for s in range(6) for p in make_pseudo_anomalies(images, seed=s, per_image=4)[1::2]]
    transplants = [p for p in pseudo if p.kind == "transplant"]
    assert transplants
    part = 12 * 12
    for p in transplants:
        source, partner = images[p.source], images[1 - p.source]
        assert _orange_pixels(p.image) - _orange_pixels(source) in (part, -part)
        assert np.array_equal(p.image[p.mask], partner[p.mask])  # the soft edge blends equal pixels
        assert np.array_equal(p.image[~p.mask], source[~p.mask])
        covered = [p.mask[26:38, 4 + slot * 15 : 16 + slot * 15].all() for slot in (0, 2)]
        assert sum(covered) == 1  # one differing part's region, whole, not both
    assert {p.source for p in transplants} == {0, 1}


def test_a_transplant_without_a_differing_partner_is_made_as_a_move() -> None:
    images = [_tray([0, 1])] * 3  # identical: nothing to transplant
    pseudo = make_pseudo_anomalies(images, seed=0, per_image=2)
    assert [p.kind for p in pseudo[1::2]] == ["move", "move", "move"]  # transplant, move, transplant
