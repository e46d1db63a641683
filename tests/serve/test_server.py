"""`npgmf-edge serve` for real: PyTriton's Triton server started as a child process on free ports, good,
corrupt and oversized images sent concurrently over HTTP and gRPC, every answer compared with
`Inspector.inspect` on the same file in this process. Stopping and readiness: test_stop.py."""

import json
import math
import shutil
import threading
import urllib.request

import cv2
import numpy as np
import pytest

from npgmf_edge.data import read_image
from npgmf_edge.errors import ServeError
from npgmf_edge.runtime import Inspector
from npgmf_edge.serve.process import pytriton_cannot_run

pytestmark = pytest.mark.skipif(pytriton_cannot_run() is not None, reason=str(pytriton_cannot_run()))

LIMIT = 1_000_000  # --max-pixels of the servers below
CLIENTS = 8


@pytest.fixture(scope="module")
def cases(tiny_run, tmp_path_factory):
    """Good images (PNG and JPEG files, distinct scores), corrupt and oversized ones, with the answer the
    in-process Inspector gives for each file (None: the server must refuse it)."""
    from npgmf_edge.serve.process import ServerProcess  # noqa: F401 - fail here if the extra is missing

    _, dataset = tiny_run
    folder = tmp_path_factory.mktemp("serve_images")
    paths = [s.image_path for s in dataset.test[::5]][:12]
    for path in paths[:2]:
        jpeg = folder / f"{path.parent.name}_{path.stem}.jpg"
        cv2.imwrite(str(jpeg), cv2.imread(str(path)), [cv2.IMWRITE_JPEG_QUALITY, 95])
    good = [*paths, *sorted(folder.glob("*.jpg"))]
    png = paths[0].read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "noise.png").write_bytes(np.random.default_rng(0).bytes(2000))
    cv2.imwrite(str(folder / "oversized.png"), np.zeros((1200, 1000, 3), np.uint8))
    bad = {name: folder / name for name in ("truncated.png", "noise.png", "oversized.png")}
    return good, bad, folder


@pytest.fixture(scope="module")
def reference(graph_bundle, cases):
    good, _, _ = cases
    with Inspector.open(graph_bundle) as inspector:
        results = inspector.inspect(good)
    scores = [r.score for r in results]
    assert len(set(scores)) == len(scores), "distinct scores are what makes a swapped answer visible"
    return {path: result for path, result in zip(good, results, strict=True)}


@pytest.fixture(scope="module")
def server(graph_bundle, tmp_path_factory):
    from npgmf_edge.serve.process import ServerProcess

    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    args = ("--max-pixels", str(LIMIT), "--max-queue-delay-us", "20000")
    with ServerProcess(graph_bundle, *args, log_path=log) as running:
        yield running


def _send_all(server, payloads: list[tuple[object, bytes | np.ndarray]]) -> dict:
    """Send every (key, payload) from CLIENTS threads, half over HTTP and half over gRPC, one image per
    request; {index: (key, protocol, result or the exception)}."""
    from npgmf_edge.serve.client import ServeClient

    answers, lock = {}, threading.Lock()

    def work(worker: int) -> None:
        url = server.grpc_url if worker % 2 else server.http_url
        with ServeClient(url) as client:
            for index in range(worker, len(payloads), CLIENTS):
                key, payload = payloads[index]
                try:
                    if isinstance(payload, np.ndarray):
                        result = client.inspect_pixels(payload)
                    else:
                        result = client.inspect_bytes(payload)
                except ServeError as exc:
                    result = exc
                with lock:
                    answers[index] = (key, client.protocol, result)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def _metric(server, name: str, model: str) -> float:
    """One of Triton's Prometheus counters for `model` (version 1)."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        lines = response.read().decode().splitlines()
    prefix = f'{name}{{model="{model}",version="1"}} '
    return float(next(line for line in lines if line.startswith(prefix))[len(prefix) :])


def test_concurrent_good_corrupt_and_oversized_images_over_http_and_grpc(server, cases, reference) -> None:
    good, bad, _ = cases
    files = [*good, *bad.values()] * 3
    payloads = [(path, path.read_bytes()) for path in files]
    answers = _send_all(server, payloads)

    assert sorted(answers) == list(range(len(payloads))), "every request got an answer"
    assert {protocol for _, protocol, _ in answers.values()} == {"http", "grpc"}
    for key, _, result in answers.values():
        assert not isinstance(result, Exception), f"{key}: {result}"
        if key in reference:
            expected = reference[key]
            assert result.score == pytest.approx(expected.score, rel=1e-5), key
            assert (result.verdict, result.error, result.precision) == (expected.verdict, None, "fp32")
            assert result.threshold == pytest.approx(expected.threshold, rel=1e-6)
        else:
            assert result.verdict == "error" and math.isnan(result.score), key
            words = "above the limit of 1,000,000" if key.name == "oversized.png" else "cannot read"
            assert words in result.error, key
    names = ("nv_inference_count", "nv_inference_exec_count")
    images, batches = (_metric(server, name, "npgmf") for name in names)
    assert images > batches, "the dynamic batcher put several requests into one batch"


def test_raw_pixels_and_maps_on_request(server, cases, reference) -> None:
    from npgmf_edge.serve.client import ServeClient

    good, _, _ = cases
    payloads = [(path, read_image(path)) for path in good[:6]] * 2
    payloads.append(("oversized", np.zeros((1200, 1000, 3), np.uint8)))
    answers = _send_all(server, payloads)
    for key, _, result in answers.values():
        if key == "oversized":
            assert result.verdict == "error" and "above the limit" in result.error
        else:
            assert result.score == pytest.approx(reference[key].score, rel=1e-5)
    for url in (server.http_url, server.grpc_url):
        with ServeClient(url) as client:
            plain = client.inspect_path(good[0])
            mapped = client.inspect_path(good[0], with_map=True)
        expected = reference[good[0]].anomaly_map
        assert plain.anomaly_map is None and mapped.anomaly_map.shape == expected.shape
        np.testing.assert_allclose(mapped.anomaly_map, expected, rtol=1e-3, atol=1e-2)


def test_readiness_and_prometheus_metrics(server) -> None:
    with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=10) as response:
        assert response.status == 200
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        metrics = response.read().decode()
    assert 'nv_inference_request_success{model="npgmf",version="1"}' in metrics


def test_serve_bench_checks_every_answer(server, cases, graph_bundle, cli, tmp_path) -> None:
    good, bad, _ = cases
    folder = tmp_path / "images"
    folder.mkdir()
    for path in [*good[:4], bad["truncated.png"]]:
        shutil.copy(path, folder / f"{path.parent.name}_{path.name}")
    code, out, err = cli(
        "serve-bench", server.grpc_url, "--images", folder, "--concurrency", 4, "--duration", 2,
        "--bundle", graph_bundle, "--json",
    )  # fmt: skip
    report = json.loads(out)
    assert code == 0, err
    assert report["checked"] and report["mismatches"] == report["lost"] == 0
    assert report["answered"] > 5 and report["errors"] > 0  # the truncated file: its own error, counted


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_raw_image_with_a_zero_side_is_its_own_error_without_a_traceback(server, protocol) -> None:
    """The probe's repro: a raw 0x0 image got HTTP 500 whose body was the server's Python traceback with
    its paths (PyTriton's shared-memory tensor store could not copy a tensor with a zero-length side). The
    all-zero image after them also checks that no trailing zero byte of the pixels is lost on the way."""
    from npgmf_edge.serve.client import ServeClient

    url = server.grpc_url if protocol == "grpc" else server.http_url
    with ServeClient(url) as client:
        for shape in ((0, 0, 3), (5, 0, 3), (0, 7, 3)):
            result = client.inspect_pixels(np.zeros(shape, np.uint8))
            assert result.verdict == "error" and math.isnan(result.score), shape
            assert result.error == f"the image is {shape[1]}x{shape[0]} pixels: it has no pixels to inspect"
        assert client.inspect_pixels(np.zeros((32, 32, 3), np.uint8)).verdict != "error"  # still serving


def test_the_client_refuses_pixels_it_cannot_describe_before_sending() -> None:
    """A grey (H, W) or float image has no (H, W, 3) uint8 bytes to send: one line, nothing sent (the
    client used to cast floats to uint8 silently). Port 9 is never contacted."""
    from npgmf_edge.serve.client import ServeClient

    with ServeClient("http://127.0.0.1:9") as client:
        for image in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)):
            with pytest.raises(ServeError, match=r"^expected RGB uint8 pixels \(H, W, 3\), got "):
                client.inspect_pixels(image)


def _peak_rss_bytes(pid: int) -> int:
    """VmHWM of a live process: its peak resident memory since it started (exec resets it)."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def test_decode_bombs_are_refused_per_item_and_the_server_stays_small(server, craft_bomb, cases) -> None:
    """Issue 24: a 138-byte GIF claiming 32768 x 8000 (its sides were read as signed shorts, so "unknown
    size", so no limit) was scored at about 1.3 GB per request. Now it and a PNG claiming 15000 x 15000
    each get their own error among good requests, and the server's peak memory does not move by a bomb."""
    from npgmf_edge.serve.client import ServeClient

    good, _, _ = cases
    before = _peak_rss_bytes(server.process.pid)
    bombs = {"gif": craft_bomb("gif", 32768, 8000), "png": craft_bomb("png", 15000, 15000)}
    for url in (server.http_url, server.grpc_url):
        with ServeClient(url) as client:
            for fmt, data in bombs.items():
                result = client.inspect_bytes(data)
                side = "32768x8000" if fmt == "gif" else "15000x15000"
                assert result.verdict == "error" and math.isnan(result.score), fmt
                assert result.error.startswith(f"the image is {side} ("), result.error
                assert result.error.endswith(
                    "above the limit of 1,000,000; shrink it before sending, or start the server with a "
                    "larger --max-pixels"
                )
            assert client.inspect_path(good[0]).verdict in ("good", "anomalous")
    assert _peak_rss_bytes(server.process.pid) - before < 100 * 2**20


def _post_json(server, model: str, inputs: list[dict]) -> tuple[int, str]:
    body = {"inputs": inputs, "outputs": [{"name": "verdict"}, {"name": "error"}]}
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/{model}/infer", json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_zero_side_over_plain_http_json_is_answered_without_a_traceback(server) -> None:
    """A client without tritonclient: the empty image in the raw model's contract is its own error; the
    probe's request (a UINT8 [1, 0, 0, 3] tensor) and a `size` of the wrong shape are refused by Triton
    itself with 400 and one line, before the backend, so neither reaches PyTriton's tensor store."""
    pixels = {"name": "pixels", "shape": [1, 1], "datatype": "BYTES", "data": [""]}
    size = {"name": "size", "shape": [1, 3], "datatype": "INT32", "data": [0, 0, 3]}
    status, text = _post_json(server, "npgmf_raw", [pixels, size])
    assert status == 200, text
    outputs = {output["name"]: output["data"] for output in json.loads(text)["outputs"]}
    empty = "the image is 0x0 pixels: it has no pixels to inspect"
    assert outputs == {"verdict": ["error"], "error": [empty]}

    old_contract = [{"name": "pixels", "shape": [1, 0, 0, 3], "datatype": "UINT8", "data": []}]
    short_size = [pixels, {**size, "shape": [1, 2], "data": [0, 0]}]
    for inputs in (old_contract, short_size):
        status, text = _post_json(server, "npgmf_raw", inputs)
        assert status == 400, text
        assert "Traceback" not in text and ".py" not in text and "/tmp" not in text, text
        assert "\n" not in json.loads(text)["error"], text
