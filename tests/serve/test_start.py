"""`serve`'s start without a server: a model load that missed PyTriton's 1 s handshake between a model's
instances (a busy CPU) is tried again; any other load failure is one line at once."""

import pytest

from npgmf_edge.errors import ServeError

InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

HANDSHAKE = (
    "[400] load failed for model 'npgmf_raw': version 1 is at UNAVAILABLE state: Internal: "
    "TritonModelException: Model initialize error: Traceback (most recent call last):\n  File "
    '"/tmp/folderIvJNf6/1/communication.py", line 546, in get_config_from_handshake_server\n'
    "TimeoutError: Timeout occurred while waiting for config file /root/w/npgmf_raw-config.sock"
)  # what the probe's loaded machine got, shortened


class FakeTriton:
    """`run` and then `connect` fail with the given errors, in order, then succeed."""

    def __init__(self, *errors: str) -> None:
        self.errors, self.calls = list(errors), []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.errors:
            raise InferenceServerException(self.errors.pop(0))

    def run(self) -> None:
        self._call("run")

    def connect(self) -> None:
        self._call("connect")


def test_a_missed_handshake_is_loaded_again() -> None:
    from npgmf_edge.serve.server import _start

    triton, lines = FakeTriton(HANDSHAKE, HANDSHAKE), []
    _start(triton, lines.append)
    assert triton.calls == ["run", "connect", "connect"]
    assert len(lines) == 2 and all("missed PyTriton's handshake" in line for line in lines)


def test_another_load_failure_or_too_many_misses_is_one_line() -> None:
    from npgmf_edge.serve.server import LOAD_TRIES, _start

    with pytest.raises(ServeError, match=r"^Triton could not load the models: \[400\] bad config$"):
        _start(FakeTriton("[400] bad config\nTraceback ..."), lambda line: None)
    triton = FakeTriton(*[HANDSHAKE] * LOAD_TRIES)
    with pytest.raises(ServeError, match=r"Triton could not load the models: .*npgmf_raw"):
        _start(triton, lambda line: None)
    assert len(triton.calls) == LOAD_TRIES
