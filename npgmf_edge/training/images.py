"""Images as model-ready tensors for training and calibration (uses the shared pre-processing)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from npgmf_edge.data import Sample, read_image
from npgmf_edge.preprocess import to_model_input


class ImageTensorDataset(Dataset):
    """Samples -> float32 (3, size, size) tensors with pixels in [0, 255], decoded once and cached
    (hundreds of images at <= 256 px: little memory, no re-decoding every epoch)."""

    def __init__(self, samples: Sequence[Sample], size: int) -> None:
        self.samples = list(samples)
        self.size = size
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> torch.Tensor:
        if index not in self._cache:
            image = read_image(self.samples[index].image_path)
            self._cache[index] = torch.from_numpy(to_model_input(image, self.size))
        return self._cache[index]


def load_batch(samples: Sequence[Sample], size: int) -> torch.Tensor:
    """All `samples` as one (N, 3, size, size) tensor."""
    arrays = [to_model_input(read_image(s.image_path), size) for s in samples]
    return torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, 3, size, size)
