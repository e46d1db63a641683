"""The command line: verbs listed, one-line errors with non-zero exit codes, never tracebacks."""

import sys
from pathlib import Path

import pytest

from npgmf_edge import __version__
from npgmf_edge.cli import main

VERBS = ("train", "evaluate", "export", "bench", "predict", "demo", "make-data")


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
