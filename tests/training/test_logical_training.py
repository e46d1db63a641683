"""Training the logical branch: loss falls, exact resume after an interruption, safetensors + JSON only,
loading without open_clip, and (on a generated LOCO set) logical anomalies score above good images."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from npgmf_edge.config import NpgmfConfig, get_preset
from npgmf_edge.data import load_dataset
from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset
from npgmf_edge.errors import CheckpointError, ConfigError
from npgmf_edge.export.onnx_graph import export_onnx
from npgmf_edge.rundir import CHECKPOINT_FILE, CONFIG_FILE, MODEL_FILE, SUMMARY_FILE, load_logical
from npgmf_edge.training import logical as logical_training
from npgmf_edge.training.images import load_batch
from npgmf_edge.training.logical import train_logical


def small_cfg(epochs: int = 2, text_prior: bool = False) -> NpgmfConfig:
    """tiny preset at 64 px on the shared 64 px dataset: seconds per epoch."""
    cfg = get_preset("tiny")
    cfg.image_size = 64
    cfg.weights.pretrained = False
    cfg.train.epochs = epochs
    cfg.train.batch_size = 4
    cfg.logical.use_text_prior = text_prior
    cfg.logical.prompt = "breakfast tray"
    return cfg


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    """The trained networks of two run folders are bit-identical, tensor by tensor."""
    a, b = load_logical(run_a), load_logical(run_b)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_weights(loco_dataset_dir: Path, tmp_path: Path) -> None:
    dataset = load_dataset(loco_dataset_dir)
    cfg = small_cfg(epochs=2)
    straight = train_logical(dataset, cfg, tmp_path / "straight", progress=False)

    def kill_mid_epoch_two(epoch: int, step: int) -> None:
        if epoch == 1 and step == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_logical(dataset, cfg, tmp_path / "resumed", progress=False, on_step=kill_mid_epoch_two)
    assert not (tmp_path / "resumed" / MODEL_FILE).exists()  # only the epoch-1 checkpoint was written
    resumed = train_logical(dataset, cfg, tmp_path / "resumed", resume=True, progress=False)

    assert resumed["resumed_after_epoch"] == 1 and resumed["epochs"] == 2
    assert resumed["loss_curve"] == straight["loss_curve"]
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


@pytest.fixture(scope="module")
def one_epoch_run(loco_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One epoch with the text prior on (random CLIP): shared, read-only; copy it before changing it."""
    dataset = load_dataset(loco_dataset_dir)
    out = tmp_path_factory.mktemp("one_epoch") / "logical"
    summary = train_logical(dataset, small_cfg(epochs=1, text_prior=True), out, progress=False)
    return dataset, out, summary


def test_run_folder_holds_safetensors_and_json_only(one_epoch_run) -> None:
    _, out, summary = one_epoch_run
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [CHECKPOINT_FILE, CONFIG_FILE, MODEL_FILE, SUMMARY_FILE]
    )
    assert json.loads((out / SUMMARY_FILE).read_text()) == summary
    assert NpgmfConfig.from_dict(json.loads((out / CONFIG_FILE).read_text())).logical.use_text_prior
    for name in (CHECKPOINT_FILE, MODEL_FILE):  # safetensors: 8-byte header length, then a JSON header
        assert (out / name).read_bytes()[8:9] == b"{"
    assert len(summary["codebook_usage"]) == 3 and len(summary["codebook_usage"][0]) == 16
    assert summary["seconds_per_epoch"] > 0 and set(summary["final_loss"]) == {"total", "cos", "recon", "vq"}


def test_loading_needs_neither_open_clip_nor_the_hub(
    one_epoch_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, run, _ = one_epoch_run
    out = Path(shutil.copytree(run, tmp_path / "logical"))
    trained = load_logical(out)
    cfg = json.loads((out / CONFIG_FILE).read_text())
    cfg["weights"]["pretrained"] = True  # as a real run would have: loading must still not download
    (out / CONFIG_FILE).write_text(json.dumps(cfg))
    monkeypatch.setitem(sys.modules, "open_clip", None)  # `import open_clip` now fails

    def no_hub(*args, **kwargs):
        raise AssertionError("load_logical tried to fetch pretrained weights")

    monkeypatch.setattr(logical_training, "compute_text_embedding", no_hub)
    monkeypatch.setattr("timm.models._builder.load_pretrained", no_hub)
    net = load_logical(out)
    assert not net.training
    x = load_batch(dataset.test[:2], 64)
    with torch.no_grad():
        assert torch.equal(net(x), trained(x))


def test_resume_with_another_architecture_is_refused(one_epoch_run, tmp_path: Path) -> None:
    dataset, run, _ = one_epoch_run
    out = Path(shutil.copytree(run, tmp_path / "logical"))
    cfg = small_cfg(epochs=2, text_prior=True)
    cfg.logical.codebook_size = 8
    with pytest.raises(CheckpointError, match=r"configuration changed \(logical.codebook_size: 16 -> 8\)"):
        train_logical(dataset, cfg, out, resume=True, progress=False)


def test_resume_watching_another_signal_is_refused(one_epoch_run, tmp_path: Path) -> None:
    # The checkpoint keeps the best epoch's weights by the signal it watched; another signal's best
    # epoch may be one whose weights are gone.
    dataset, run, _ = one_epoch_run
    out = Path(shutil.copytree(run, tmp_path / "logical"))
    cfg = small_cfg(epochs=2, text_prior=True)
    cfg.train.stop_on = "pseudo_auroc"
    with pytest.raises(CheckpointError, match=r"train.stop_on: 'validation_loss' -> 'pseudo_auroc'"):
        train_logical(dataset, cfg, out, resume=True, progress=False)


def test_missing_run_and_unknown_schedule_are_clear_errors(loco_dataset_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="holds no trained logical branch"):
        load_logical(tmp_path)
    cfg = small_cfg()
    cfg.train.lr_schedule = "step"
    with pytest.raises(ConfigError, match=r"unknown train\.lr_schedule 'step'"):
        train_logical(load_dataset(loco_dataset_dir), cfg, tmp_path / "run", progress=False)


@pytest.fixture(scope="module")
def trained_on_trays(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """The tiny preset (20 epochs, batch 4, random init) trained on 24 generated trays (seed 0); shared below.

    Its outcomes per seed (data and training seed; issue 24), on this project's 2-core Xeon, one torch thread:
    loss last/first epoch 0.341, 0.323, 0.417, 0.364, 0.396 (seeds 0-4); codes used 16 of 16 in every
    codebook. Image AUROC of logical anomalies against good images on its 40 test images: 0.66, 0.6275, 0.615,
    0.54, 0.40;
    seed 0 with two threads 0.765, and 0.6475 on an AMD EPYC (AVX-512). With the preset's ImageNet Lite0:
    0.5625, 0.565, 0.69 (seeds 0-2). Forty images after 20 epochs hold no AUROC bar above chance on every
    machine, so that claim is tested on the default set instead
    (`test_end_to_end.py::test_logical_map_ranks_logical_anomalies_above_good_images`).
    """
    root = tmp_path_factory.mktemp("trays")
    small = SyntheticConfig(
        seed=0, image_size=128, n_train=24, n_validation=2, n_test_good=20, n_logical=20, n_structural=2
    )
    data = Path(generate_dataset(root / "data", small)["dataset"])
    cfg = get_preset("tiny")
    cfg.weights.pretrained = False
    cfg.logical.prompt = "breakfast tray"
    cfg.train.epochs = 20
    cfg.train.batch_size = 4
    summary = train_logical(load_dataset(data), cfg, root / "logical", progress=False)
    return data, root / "logical", summary


def test_training_loss_falls(trained_on_trays) -> None:
    """Worst of five seeds: the loss fell to 0.417 of its first epoch; 16 codes used everywhere (fixture)."""
    _, _, summary = trained_on_trays
    curve = summary["loss_curve"]
    assert curve[-1] < 0.5 * curve[0]
    assert all(used >= 8 for used in summary["codes_used"])  # codebooks stay alive


def test_trained_network_exports_and_onnxruntime_reproduces_its_map(trained_on_trays, tmp_path: Path) -> None:
    import onnxruntime as ort

    data, run, _ = trained_on_trays
    net = load_logical(run)
    x = load_batch(load_dataset(data).test[:4], 128)
    path = export_onnx(net, x[:1], tmp_path / "logical.onnx", "image", ["logical_map"])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[
        0
    ]
    with torch.no_grad():
        expected = net(x).numpy()
    assert np.abs(got - expected).max() <= 1e-4


CHILD = """
import sys, time
from pathlib import Path
from npgmf_edge.config import NpgmfConfig
from npgmf_edge.data import load_dataset
from npgmf_edge.training.logical import train_logical

cfg = NpgmfConfig.load(Path(sys.argv[3]))
marker = Path(sys.argv[4])

def hang_mid_epoch_two(epoch, step):
    if epoch == 1 and step == 1:
        marker.write_text("ready")
        time.sleep(600)  # killed here by the parent with SIGKILL

dataset = load_dataset(Path(sys.argv[1]))
train_logical(dataset, cfg, Path(sys.argv[2]), progress=False, on_step=hang_mid_epoch_two)
"""


def test_run_killed_with_sigkill_mid_epoch_resumes_to_the_same_weights(
    loco_dataset_dir: Path, tmp_path: Path
) -> None:
    import subprocess
    import time

    dataset = load_dataset(loco_dataset_dir)
    cfg = small_cfg(epochs=2)
    straight = train_logical(dataset, cfg, tmp_path / "straight", progress=False)
    cfg.save(tmp_path / "cfg.json")
    marker = tmp_path / "marker"
    args = [str(loco_dataset_dir), str(tmp_path / "killed"), str(tmp_path / "cfg.json"), str(marker)]
    child = subprocess.Popen([sys.executable, "-c", CHILD, *args])
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert child.poll() is None, "training process ended early"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        child.kill()  # SIGKILL: no cleanup code runs
        child.wait()
    leftovers = [p.name for p in (tmp_path / "killed").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    resumed = train_logical(dataset, cfg, tmp_path / "killed", resume=True, progress=False)
    assert resumed["resumed_after_epoch"] == 1
    assert resumed["loss_curve"] == straight["loss_curve"]
    assert_same_weights(tmp_path / "straight", tmp_path / "killed")
