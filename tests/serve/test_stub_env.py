"""Where numpy 1 has no wheel (Python 3.13+), serving says so in one line and set-up still completes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from npgmf_edge.errors import ServeError
from npgmf_edge.serve import process, stub_env


def test_the_stub_is_unavailable_exactly_past_numpy_1s_last_python() -> None:
    newer = sys.version_info[:2] > (3, 12)
    assert (stub_env.stub_env_unavailable() is not None) == (newer and stub_env.numpy_major() >= 2)


def test_a_python_without_numpy_1_wheels_skips_serving_and_set_up_completes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(stub_env, "numpy_major", lambda: 2)
    monkeypatch.setattr(stub_env, "NUMPY1_LAST_PYTHON", (3, sys.version_info.minor - 1))
    reason = stub_env.stub_env_unavailable()
    assert reason is not None and f"Python 3.{sys.version_info.minor}" in reason

    monkeypatch.setattr(process.platform, "system", lambda: "Linux")  # a machine PyTriton's wheel suits
    monkeypatch.setattr(process.platform, "libc_ver", lambda: ("glibc", "2.41"))
    monkeypatch.setattr(process.platform, "machine", lambda: "x86_64")
    assert process.pytriton_cannot_run() == reason  # the serve tests skip with it
    with pytest.raises(ServeError, match=r"numpy 1\.x"):
        stub_env.python_backend_env()

    target = tmp_path / "stub"
    monkeypatch.setattr(sys, "argv", ["stub_env", str(target)])
    stub_env.main()  # returns: `make setup` goes on
    assert "Triton serving is unavailable here" in capsys.readouterr().out
    assert not target.exists()
