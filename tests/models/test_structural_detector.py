"""The structural detector end to end on a texture: real feature extraction (random-init resnet18)."""

import cv2
import numpy as np
import pytest
import torch

from npgmf_edge.config import get_preset
from npgmf_edge.knn import BruteForceNN, FaissNN
from npgmf_edge.models.structural import (
    GreedyCoresetSampler,
    StructuralDetector,
    build_patch_extractor,
)

SIZE = 128
PERIOD = 32
PASTE = (slice(72, 104), slice(40, 72))  # rows, cols of the foreign patch


def _texture(seed: int, blur: float = 2.0) -> np.ndarray:
    """A colourful, tileable texture of period 32 px (smooth for blur 2), bigger than a crop."""
    rng = np.random.default_rng(seed)
    tile = rng.uniform(0, 255, size=(PERIOD, PERIOD, 3)).astype(np.float32)
    tile = cv2.GaussianBlur(np.tile(tile, (3, 3, 1)), (0, 0), blur)[PERIOD : 2 * PERIOD, PERIOD : 2 * PERIOD]
    return np.tile(tile, (SIZE // PERIOD + 2, SIZE // PERIOD + 2, 1))


def _crop(texture: np.ndarray, dy: int, dx: int) -> torch.Tensor:
    return torch.from_numpy(texture[dy : dy + SIZE, dx : dx + SIZE].transpose(2, 0, 1).copy())


@pytest.fixture(scope="module")
def texture_setup():
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.logical.encoder = "resnet18"  # random resnet18: the texture case these bounds were measured on
    cfg.weights.pretrained = False
    extractor = build_patch_extractor(cfg)
    texture = _texture(0)
    shifts = [(dy, dx) for dy in range(0, PERIOD, 8) for dx in range(0, PERIOD, 8)]  # 16 crops
    train = torch.stack([_crop(texture, dy, dx) for dy, dx in shifts])
    with torch.no_grad():
        features = torch.cat([extractor(b) for b in train.split(16)])
    bank = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    coreset = GreedyCoresetSampler(0.25, projection_dim=64).run(bank).numpy()
    test = _crop(texture, 6, 10)  # a shift not among the training ones, made of the same texture
    pasted = test.clone()
    foreign = _texture(1, blur=0.7)[: PASTE[0].stop - PASTE[0].start, : PASTE[1].stop - PASTE[1].start]
    pasted[:, PASTE[0], PASTE[1]] = torch.from_numpy(foreign.transpose(2, 0, 1).copy())
    return extractor, coreset, train, test, pasted


def test_pasted_foreign_patch_scores_high_at_its_location(texture_setup):
    extractor, coreset, train, test, pasted = texture_setup
    detector = StructuralDetector(extractor, FaissNN(on_gpu=False).fit(coreset))
    maps = detector.anomaly_map(torch.stack([train[5], test, pasted]))
    assert maps.shape == (3, 1, SIZE, SIZE) and maps.dtype == torch.float32
    peak = maps[2, 0].max()
    row, col = divmod(int(maps[2, 0].argmax()), SIZE)
    assert PASTE[0].start - 8 <= row < PASTE[0].stop + 8 and PASTE[1].start - 8 <= col < PASTE[1].stop + 8
    assert peak > 20 * maps[0].max()  # a training image: made of training patches
    assert peak > 5 * maps[1].max()  # an unseen shift of the same texture
    assert torch.allclose(
        detector.image_scores(torch.stack([train[5], pasted])), maps[[0, 2]].amax((1, 2, 3))
    )


def test_training_patches_score_about_zero_with_the_whole_bank(texture_setup):
    extractor, _, train, _, pasted = texture_setup
    with torch.no_grad():
        bank = extractor(train).permute(0, 2, 3, 1).reshape(-1, extractor.embed_dim).numpy()
    detector = StructuralDetector(extractor, BruteForceNN().fit(bank))
    scores = detector.patch_scores(train[:4])
    assert scores.shape == (4, SIZE // 8, SIZE // 8)
    assert scores.max() < 1e-2 * detector.patch_scores(pasted[None]).max()


def test_faiss_and_brute_force_detectors_give_the_same_map(texture_setup):
    extractor, coreset, _, test, pasted = texture_setup
    pixels = torch.stack([test, pasted])
    a = StructuralDetector(extractor, FaissNN(on_gpu=False).fit(coreset)).anomaly_map(pixels)
    b = StructuralDetector(extractor, BruteForceNN().fit(coreset)).anomaly_map(pixels)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
