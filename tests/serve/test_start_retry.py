"""A model that fails to load gets a fresh Triton, up to START_ATTEMPTS times, and then one line.

PyTriton's handshake between a model's instances allows 1 s, which a heavily loaded CPU can miss
(docs/SERVE.md). Triton itself is replaced here by a stand-in whose every model load fails as the real one
does (tritonclient's InferenceServerException), so the retry is tested without a loaded machine."""

import pytest

from npgmf_edge.errors import ServeError
from npgmf_edge.serve import server
from npgmf_edge.serve.process import pytriton_cannot_run

pytestmark = pytest.mark.skipif(pytriton_cannot_run() is not None, reason=str(pytriton_cannot_run()))

LOAD_FAILURE = (
    "[400] load failed for model 'npgmf_raw': version 1 is at UNAVAILABLE state: Internal: "
    'TritonModelException: Model initialize error: Traceback (most recent call last):\n  File "/tmp/f/1/'
    'model.py", line 425, in initialize\n    sock.connect(socket_path.as_posix())\nConnectionRefusedError: '
    "[Errno 111] Connection refused\n\n\nAt:\n  /tmp/f/1/model.py(454): initialize\n"
)


class FailingTriton:
    """Triton whose every model load fails; counts how many servers were started and stopped."""

    started = stopped = 0

    def __init__(self, **_) -> None:
        pass

    def __enter__(self):
        FailingTriton.started += 1
        return self

    def __exit__(self, *_) -> None:
        FailingTriton.stopped += 1

    def bind(self, **_) -> None:
        from tritonclient.utils import InferenceServerException

        raise InferenceServerException(LOAD_FAILURE)


def test_a_failed_model_load_starts_a_fresh_triton_then_fails_in_one_line(graph_bundle, monkeypatch) -> None:
    import pytriton.triton

    monkeypatch.setattr(pytriton.triton, "Triton", FailingTriton)
    monkeypatch.setattr(server, "_start_triton_in_own_session", lambda: None)
    lines: list[str] = []
    with pytest.raises(ServeError) as refused:
        server.serve_bundle(graph_bundle, server.ServeOptions(), log=lines.append)
    message = str(refused.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith("Triton could not load the models of ") and "load failed for model" in message
    assert message.endswith("Model initialize error: ConnectionRefusedError: [Errno 111] Connection refused")
    assert FailingTriton.started == FailingTriton.stopped == server.START_ATTEMPTS
    retries = [line for line in lines if "starting it again" in line]
    assert len(retries) == server.START_ATTEMPTS - 1, lines
