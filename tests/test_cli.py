"""The command line: verbs listed, one-line errors with non-zero exit codes, never tracebacks."""

import sys
from pathlib import Path

import pytest

from npgmf_edge import __version__
from npgmf_edge.cli import main

VERBS = ("train", "evaluate", "export", "verify", "bench", "predict", "demo", "make-data")


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["npgmf-edge", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def test_help_lists_every_verb(monkeypatch, capsys) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "--help")
    assert code == 0
    for verb in VERBS:
        assert verb in out


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help_text(monkeypatch, capsys, verb: str) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, verb, "--help")
    assert code == 0
    assert "Usage:" in out


def test_version_prints_the_package_version(monkeypatch, capsys) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "--version")
    assert (code, out.strip()) == (0, f"npgmf-edge {__version__}")


def test_unknown_option_is_one_line_error(monkeypatch, capsys) -> None:
    code, out, err = run_cli(monkeypatch, capsys, "make-data", "/tmp/x", "--colour", "red")
    assert code == 2
    assert err == "error: No such option: --colour\n"
    assert out == ""


def test_missing_dataset_path_is_one_line_error(monkeypatch, capsys, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    code, _, err = run_cli(monkeypatch, capsys, "train", str(missing))
    assert code == 2
    assert err == f"error: Invalid value for 'data': path '{missing}' does not exist.\n"


def test_library_errors_become_one_line_and_exit_1(monkeypatch, capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tmp_path), "--preset", "huge")
    assert code == 1
    assert err == "error: unknown preset 'huge'; choose one of: tiny, edge, paper\n"


def test_export_and_verify_from_the_command_line(monkeypatch, capsys, tiny_run, tmp_path: Path) -> None:
    import json

    run, dataset = tiny_run
    bundle = tmp_path / "bundle"
    code, out, err = run_cli(
        monkeypatch, capsys, "export", str(run), "--out", str(bundle), "--no-tensorrt", "--json"
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["precisions"] == ["fp32"] and "model.fp32.onnx" in summary["files"]
    assert "[npgmf-edge] exporting the inspection network (FP32)" in err  # progress, one line per stage
    code, out, _ = run_cli(
        monkeypatch, capsys, "verify", str(bundle), "--run", str(run), "--data", str(dataset.root)
    )
    assert code == 0
    assert "FP32 parity holds" in out


def test_export_of_a_folder_that_is_not_a_run_is_one_line(monkeypatch, capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "export", str(tmp_path), "--out", str(tmp_path / "b"))
    assert code == 1
    assert err == f"error: {tmp_path} is not a run directory: {tmp_path / 'config.json'} is missing\n"


def test_verify_of_a_damaged_bundle_names_the_file(
    monkeypatch, capsys, faiss_bundle, tiny_run, tmp_path
) -> None:
    import shutil

    bundle = Path(shutil.copytree(faiss_bundle, tmp_path / "bundle"))
    (bundle / "coreset.npy").write_bytes(b"\x93NUMPY damaged")
    run, dataset = tiny_run
    code, _, err = run_cli(
        monkeypatch, capsys, "verify", str(bundle), "--run", str(run), "--data", str(dataset.root)
    )
    assert code == 1
    assert err.startswith(f"error: {bundle / 'coreset.npy'} does not match the SHA-256")
    assert err.count("\n") == 1


def test_predict_on_a_bundle_exits_1_when_an_image_has_no_verdict(
    monkeypatch, capsys, faiss_bundle, tiny_run, tmp_path
) -> None:
    _, dataset = tiny_run
    folder = tmp_path / "images"
    folder.mkdir()
    for sample in dataset.test[:2]:
        (folder / f"{sample.defect_type}_{sample.image_path.name}").write_bytes(
            sample.image_path.read_bytes()
        )
    (folder / "zz_truncated.png").write_bytes(dataset.test[0].image_path.read_bytes()[:100])
    code, out, _ = run_cli(
        monkeypatch, capsys, "predict", str(faiss_bundle), str(folder), "--out", str(tmp_path / "p")
    )
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 4 and lines[2].startswith("error") and "zz_truncated.png" in lines[2]
    assert " of 3 anomalous, 1 without a verdict; summary in " in lines[-1]


def test_an_os_error_is_one_line_naming_the_path(monkeypatch, capsys, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(monkeypatch, capsys, "make-data", str(blocker / "data"), "--n-train", "2")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and str(blocker) in err


def test_ctrl_c_says_interrupted_and_exits_130(monkeypatch, capsys) -> None:
    from npgmf_edge import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted)
    code, _, err = run_cli(monkeypatch, capsys, "--help")
    assert (code, err.splitlines()[0].split(" (")[0]) == (130, "interrupted")
