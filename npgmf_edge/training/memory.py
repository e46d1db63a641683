"""Memory a training run will need, estimated from the sizes before any work starts: a run that cannot fit
is refused in one line, not killed half-way by the kernel (docs/RELIABILITY.md). Example:
`check_memory(cfg, dataset, "all")` raises ConfigError when the structural memory bank would not fit."""

from __future__ import annotations

import os
from typing import Any

import torch

from npgmf_edge.config import NpgmfConfig
from npgmf_edge.data import AnomalyDataset
from npgmf_edge.errors import ConfigError
from npgmf_edge.models.structural.torch_model import patch_feature_dim

STRUCTURAL_STRIDE = 8  # the memory bank's patch grid: the finer of the structural levels (strides 8, 16)
MEMORY_HEADROOM = 0.8  # refuse work whose estimate exceeds this share of the memory available now
ADAM_COPIES = 4  # trainable weights, their gradients and Adam's two moments
BACKWARD_FACTOR = 2  # activations kept for the backward pass, and the gradients flowing back through them
PROBE_TEXT_WIDTH = 512  # CLIP ViT-B-32's text embedding: only the text FC's size depends on it


def available_memory() -> int:
    """Bytes the kernel says are available now (MemAvailable, counting reclaimable cache; else free pages)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(cfg: NpgmfConfig, dataset: AnomalyDataset, branch: str) -> None:
    """Refuse a structural branch whose memory bank (every training patch, D float32 values each, plus its
    projection for the coreset search) would not fit in the memory available, before any work starts."""
    if branch not in ("structural", "all"):
        return
    grid = cfg.image_size // STRUCTURAL_STRIDE
    patches = len(dataset.train) * grid * grid
    dim = patch_feature_dim(cfg)
    needed = patches * (dim + cfg.structural.coreset_projection_dim) * 4
    available = available_memory()
    if needed > MEMORY_HEADROOM * available:
        raise ConfigError(
            f"the structural memory bank needs about {needed / 2**30:.1f} GiB ({len(dataset.train)} images x "
            f"{grid}x{grid} patches x ({dim} + {cfg.structural.coreset_projection_dim}) "
            f"float32) but {available / 2**30:.1f} GiB of memory is available; train on fewer images or a "
            "smaller --image-size"
        )


def logical_training_bytes(cfg: NpgmfConfig) -> tuple[int, int]:
    """(fixed, per image of a batch) bytes of one logical training step, from the sizes: one batch-1
    forward of a random-init copy of the network, hooks summing the output of every trained leaf module
    (what autograd keeps for the backward pass, counted once more for the gradients flowing back), plus the
    trainable parameters `ADAM_COPIES` times (weights, gradients, Adam's two moments)."""
    from npgmf_edge.models.logical.torch_model import NpgmfLogicalNet

    lg = cfg.logical
    embedding = torch.zeros(PROBE_TEXT_WIDTH) if lg.use_text_prior else None
    net = NpgmfLogicalNet(lg, cfg.image_size, embedding, pretrained=False, weights=None, warn_random=False)
    activations = 0

    def count(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        nonlocal activations
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                activations += tensor.numel() * tensor.element_size()

    frozen = set(net.encoder.modules())  # runs without autograd: nothing of it is kept for the backward
    leaves = [m for m in net.modules() if not list(m.children()) and m not in frozen]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            net.forward_train(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
    finally:
        for hook in hooks:
            hook.remove()
    trainable = sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)
    return ADAM_COPIES * trainable, BACKWARD_FACTOR * activations


def check_training_memory(
    cfg: NpgmfConfig, dataset: AnomalyDataset, branch: str, device: torch.device
) -> None:
    """Refuse a logical branch whose training step (the batch's activations, gradients and optimiser
    state) plus its cached training images would not fit in memory, before any work starts."""
    if branch not in ("logical", "all"):
        return
    batch = min(cfg.train.batch_size, len(dataset.train))  # batches never exceed the training set
    images = len(dataset.train) + len(dataset.validation)  # validated every epoch: cached too
    cached = images * 3 * cfg.image_size * cfg.image_size * 4  # float32 images, kept in RAM
    fixed, per_image = logical_training_bytes(cfg)
    step = fixed + batch * per_image
    # (bytes needed, bytes available, where): the step runs on the device, the image cache stays in RAM.
    if device.type == "cuda":
        budgets = [
            (step, torch.cuda.mem_get_info(device)[0], f"on {device}"),
            (cached, available_memory(), "in RAM"),
        ]
    else:
        budgets = [(step + cached, available_memory(), "in RAM")]
    for needed, available, where in budgets:
        if needed > MEMORY_HEADROOM * available:
            raise ConfigError(
                f"logical training needs about {_gib(needed)} {where} (a batch of {batch} images at "
                f"{cfg.image_size} px: {_gib(batch * per_image)} of activations, {_gib(fixed)} of weights "
                f"and optimiser state, {_gib(cached)} of cached training images) but {_gib(available)} is "
                "available; lower --batch-size or --image-size, or train on fewer images"
            )


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"
