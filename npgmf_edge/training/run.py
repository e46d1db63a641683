"""Train one or both branches into a run directory (the input of calibration, evaluation and export).

Layout of a run directory:
    config.json          the full NpgmfConfig (plus category)
    logical/             logical branch weights, config and resumable checkpoint
    structural/          structural extractor config and coreset
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from npgmf_edge.config import NpgmfConfig
from npgmf_edge.data import AnomalyDataset
from npgmf_edge.errors import ConfigError

BRANCHES = ("logical", "structural", "all")


def train_run(
    dataset: AnomalyDataset, cfg: NpgmfConfig, out: Path, *, branch: str = "all", resume: bool = False
) -> dict[str, Any]:
    """Train the chosen branch(es) of `cfg` on `dataset.train` into `out`; returns a summary."""
    if branch not in BRANCHES:
        raise ConfigError(f"unknown branch {branch!r}; choose one of: {', '.join(BRANCHES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.logical.prompt is None:
        cfg.logical.prompt = dataset.category.replace("_", " ")
    cfg.save(out / "config.json")
    (out / "dataset.json").write_text(
        json.dumps(
            {"root": str(dataset.root), "format": dataset.format, "category": dataset.category}, indent=2
        )
    )
    summary: dict[str, Any] = {"run": str(out), "category": dataset.category, "preset": cfg.preset}
    if branch in ("logical", "all"):
        from npgmf_edge.training.logical import train_logical

        summary["logical"] = train_logical(dataset, cfg, out / "logical", resume=resume)
    if branch in ("structural", "all"):
        from npgmf_edge.training.structural import train_structural

        summary["structural"] = train_structural(dataset, cfg, out / "structural")
    return summary
