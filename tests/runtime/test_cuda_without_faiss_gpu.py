"""`device="cuda"` on a station whose FAISS has no GPU code (faiss-cpu: every Jetson, many RTX PCs).

The GPU is faked where the runtime asks for it: onnxruntime lists the CUDA provider and its sessions
report it (the CPU build computes underneath) and FAISS reports a GPU count of 1. The real faiss-cpu
stays installed, so the FAISS side is what a station really has. Documented behaviour (docs/DEPLOY.md):
a `graph` bundle needs no FAISS at all; a `faiss` bundle answers with CPU FAISS and one warning line.
The reference for every score is the same bundle opened on the CPU.
"""

import json
import logging
import sys
from pathlib import Path

import onnxruntime
import pytest

from npgmf_edge.cli import main
from npgmf_edge.errors import BundleError, ConfigError
from npgmf_edge.knn import FaissNN, faiss_gpu_unavailable_reason
from npgmf_edge.runtime import Inspector

IMAGES = 3
CPU_SEARCH = "the coreset search runs on the CPU, not the GPU"


class _CudaSession(onnxruntime.InferenceSession):
    """A session that says it runs the providers it was given, computing on the CPU provider."""

    def __init__(self, path, sess_options=None, providers=None, **kwargs) -> None:
        super().__init__(path, sess_options, providers=["CPUExecutionProvider"], **kwargs)
        self._claimed = list(providers or ["CPUExecutionProvider"])

    def get_providers(self) -> list[str]:
        return self._claimed


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime offers CUDA and FAISS counts one GPU; nothing else of the machine changes."""
    import faiss

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(providers))
    monkeypatch.setattr(onnxruntime, "InferenceSession", _CudaSession)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)


@pytest.fixture
def no_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError


@pytest.fixture(scope="module")
def images(tiny_run) -> list[Path]:
    return [s.image_path for s in tiny_run[1].test[::10]][:IMAGES]


def _scores(bundle: Path, images: list[Path], device: str) -> list[float]:
    with Inspector.open(bundle, device=device) as inspector:
        return [i.score for i in inspector.inspect(images)]


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["npgmf-edge", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def _predict_scores(monkeypatch, capsys, bundle: Path, images: list[Path], out: Path) -> list[float]:
    """`predict BUNDLE IMAGES --device cuda --json`: exit 0, no traceback; the scores it printed."""
    args = ["predict", str(bundle), *map(str, images), "--device", "cuda", "--out", str(out), "--json"]
    code, stdout, err = _cli(monkeypatch, capsys, *args)
    assert code == 0 and "Traceback" not in err
    return [row["score"] for row in json.loads(stdout)["predictions"]]


def _cpu_search_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if CPU_SEARCH in r.getMessage()]


def test_faiss_cpu_reports_why_it_cannot_search_on_the_gpu(fake_gpu) -> None:
    import faiss

    assert faiss_gpu_unavailable_reason() == f"faiss {faiss.__version__} here is a CPU-only build (faiss-cpu)"
    with pytest.raises(ConfigError, match=r"^FAISS cannot search on the GPU: faiss .* CPU-only build"):
        FaissNN(on_gpu=True)
    assert FaissNN().on_gpu is False  # left to decide, it searches where it can


def test_a_faiss_bundle_on_cuda_answers_with_cpu_faiss_and_one_warning_line(
    faiss_bundle, images, fake_gpu, caplog
) -> None:
    expected = _scores(faiss_bundle, images, "cpu")
    caplog.clear()
    with caplog.at_level(logging.WARNING), Inspector.open(faiss_bundle, device="cuda") as inspector:
        got = [i.score for i in inspector.inspect(images)]
        assert inspector.knn is not None and inspector.knn.on_gpu is False
    assert got == expected
    (warning,) = _cpu_search_warnings(caplog)
    assert "\n" not in warning
    assert "CPU-only build (faiss-cpu)" in warning and "re-export with --knn graph" in warning


def test_a_graph_bundle_on_cuda_needs_no_faiss(graph_bundle, images, fake_gpu, no_faiss, caplog) -> None:
    expected = _scores(graph_bundle, images, "cpu")
    with caplog.at_level(logging.WARNING), Inspector.open(graph_bundle, device="cuda") as inspector:
        got = [i.score for i in inspector.inspect(images)]
        assert inspector.knn is None
    assert got == expected
    assert _cpu_search_warnings(caplog) == []


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")
def test_onnxruntime_falling_back_to_the_cpu_is_refused_not_hidden(graph_bundle, monkeypatch) -> None:
    """onnxruntime-gpu without its CUDA libraries lists the provider, then runs on the CPU with a warning."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPU"])
    with pytest.raises(BundleError) as refused:
        Inspector.open(graph_bundle, device="cuda")
    message = str(refused.value)
    assert "\n" not in message
    assert "could not load it" in message and "CPUExecutionProvider" in message


def test_a_faiss_bundle_without_faiss_is_refused_in_one_line(faiss_bundle, no_faiss) -> None:
    with pytest.raises(BundleError) as refused:
        Inspector.open(faiss_bundle, device="cpu")
    message = str(refused.value)
    assert "\n" not in message
    assert "searches its coreset with FAISS" in message and "re-export with --knn graph" in message


def test_predict_and_verify_on_cuda_with_faiss_cpu(
    faiss_bundle, images, fake_gpu, monkeypatch, capsys, caplog, tmp_path: Path
) -> None:
    expected = _scores(faiss_bundle, images, "cpu")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        got = _predict_scores(monkeypatch, capsys, faiss_bundle, images, tmp_path / "out")
    assert got == pytest.approx(expected, rel=1e-6)
    assert len(_cpu_search_warnings(caplog)) == 1
    code, out, err = _cli(monkeypatch, capsys, "verify", str(faiss_bundle), "--device", "cuda", "--json")
    assert code == 0 and "Traceback" not in err
    report = json.loads(out)
    assert report["passed"] and [row["precision"] for row in report["rows"]] == ["fp32", "fp16", "int8"]


def test_predict_and_verify_a_graph_bundle_on_cuda_without_faiss(
    graph_bundle, images, fake_gpu, no_faiss, monkeypatch, capsys, tmp_path: Path
) -> None:
    expected = _scores(graph_bundle, images, "cpu")
    got = _predict_scores(monkeypatch, capsys, graph_bundle, images, tmp_path / "out")
    assert got == pytest.approx(expected, rel=1e-6)
    code, out, _ = _cli(monkeypatch, capsys, "verify", str(graph_bundle), "--device", "cuda", "--json")
    assert code == 0 and json.loads(out)["passed"]


def test_a_faiss_gpu_build_that_sees_a_gpu_gets_the_coreset(
    faiss_bundle, images, fake_gpu, monkeypatch
) -> None:
    """The GPU path itself: the index goes through `index_cpu_to_gpu` (faked: the CPU index comes back)."""
    import faiss

    moved: list[int] = []

    def to_gpu(resources, device, index):
        moved.append(index.ntotal)
        return index

    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    expected = _scores(faiss_bundle, images, "cpu")
    with Inspector.open(faiss_bundle, device="cuda") as inspector:
        assert inspector.knn is not None and inspector.knn.on_gpu is True
        got = [i.score for i in inspector.inspect(images)]
    assert moved == [inspector.manifest.coreset["count"]]
    assert got == expected
