"""The batched infer function without a server: a dynamic batch of requests in, one answer per image out,
compared with `Inspector.inspect` on the same files in this process."""

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from npgmf_edge.data import read_image
from npgmf_edge.data.image_io import decode_image_bytes
from npgmf_edge.errors import DatasetError
from npgmf_edge.runtime import Inspector
from npgmf_edge.serve.model import MAP_OUTPUT, InspectorModel, stack_maps, unpack_raw

LIMIT = 1_000_000  # pixels; an oversized test image is 1200 x 1000


@pytest.fixture(scope="module")
def served(graph_bundle, tiny_run):
    _, dataset = tiny_run
    paths = [s.image_path for s in dataset.test[::7]][:6]
    inspector = Inspector.open(graph_bundle)
    model = InspectorModel(inspector, max_pixels=LIMIT)
    yield model, paths, inspector.inspect(paths)
    model.close()
    inspector.close()


def _blob(*items: bytes) -> dict[str, np.ndarray]:
    return {"image": np.array([[item] for item in items], dtype=object)}


def _png(height: int, width: int) -> bytes:
    return cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))[1].tobytes()


def test_each_request_of_a_batch_gets_its_own_images_answers(served) -> None:
    model, paths, expected = served
    good = [Path(p).read_bytes() for p in paths]
    requests = [_blob(good[0]), _blob(b"not an image"), _blob(good[1], good[2]), _blob(_png(1200, 1000))]
    requests += [_blob(good[k]) for k in range(3, 6)]
    responses = model.infer_encoded(requests, [None] * len(requests))

    scores = [r["score"][:, 0].tolist() for r in responses]
    verdicts = [[v.decode() for v in r["verdict"][:, 0]] for r in responses]
    assert [len(s) for s in scores] == [1, 1, 2, 1, 1, 1, 1]
    got = [scores[0][0], *scores[2], *(s[0] for s in scores[4:])]
    assert got == pytest.approx([e.score for e in expected], rel=1e-5)
    assert [verdicts[0][0], *verdicts[2], *(v[0] for v in verdicts[4:])] == [e.verdict for e in expected]
    for bad, words in ((1, "cannot read"), (3, "above the limit of 1,000,000")):
        assert verdicts[bad] == ["error"] and math.isnan(scores[bad][0])
        assert words in responses[bad]["error"][0, 0].decode()
    assert all(r["precision"][0, 0] == b"fp32" for r in responses)
    assert responses[0]["error"][0, 0] == b""


def test_the_map_is_computed_only_when_asked_for(served) -> None:
    model, paths, expected = served
    blob = Path(paths[0]).read_bytes()
    without, with_map = model.infer_encoded([_blob(blob), _blob(blob)], [["score", "verdict"], [MAP_OUTPUT]])
    assert MAP_OUTPUT not in without
    anomaly_map = with_map[MAP_OUTPUT][0]
    assert anomaly_map.dtype == np.float16 and anomaly_map.shape == expected[0].anomaly_map.shape
    np.testing.assert_allclose(anomaly_map, expected[0].anomaly_map, rtol=1e-3, atol=1e-2)


def _raw(*images: np.ndarray) -> dict[str, np.ndarray]:
    """A raw-model request as a client sends it: each image's bytes and its (H, W, 3) shape."""
    blobs = np.array([[image.tobytes()] for image in images], dtype=object).reshape(len(images), 1)
    return {"pixels": blobs, "size": np.array([image.shape for image in images], np.int32).reshape(-1, 3)}


def test_raw_pixels_give_the_scores_of_the_files(served) -> None:
    model, paths, expected = served
    pixels = [read_image(p) for p in paths[:3]]
    oversized = np.zeros((1200, 1000, 3), np.uint8)
    responses = model.infer_raw([_raw(pixels[0]), _raw(pixels[1], pixels[2]), _raw(oversized)])
    scores = [*responses[0]["score"][:, 0], *responses[1]["score"][:, 0]]
    assert scores == pytest.approx([e.score for e in expected[:3]], rel=1e-5)
    assert responses[2]["verdict"][0, 0] == b"error" and b"above the limit" in responses[2]["error"][0, 0]


def test_raw_bytes_unpack_to_the_clients_array() -> None:
    """Row by row, trailing zero bytes kept (a BYTES element must not be stripped like numpy's S dtype)."""
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image[-1] = 0
    [item] = unpack_raw([image.tobytes()], np.array([[5, 7, 3]], np.int32), max_pixels=35)
    assert item.error is None
    np.testing.assert_array_equal(item.pixels, image)


def test_raw_bytes_that_do_not_match_their_size_or_have_no_pixels_are_errors() -> None:
    """Each refusal is its own one-line error; the probe's repro (a raw 0x0 image) among them."""
    cases = [
        (b"", (0, 0, 3), "the image is 0x0 pixels: it has no pixels to inspect"),
        (b"", (0, 5, 3), "the image is 5x0 pixels: it has no pixels to inspect"),
        (bytes(15), (5, 0, 3), "the image is 0x5 pixels: it has no pixels to inspect"),
        (bytes(59), (4, 5, 3), "the pixels are 59 bytes, but a 5x4 RGB image is 60 (height x width x 3 "
         "uint8, row by row)"),
        (bytes(80), (4, 5, 4), "size must be (height, width, 3) for RGB, got (4, 5, 4)"),
        (bytes(12), (-2, -2, 3), "size must be (height, width, 3) for RGB, got (-2, -2, 3)"),
        (bytes(3 * 41), (1, 41, 3), "the image is 41x1 (41 pixels), above the limit of 40; shrink it, or "
         "start the server with a larger --max-pixels"),
        ("text", (1, 1, 3), "expected the pixels as bytes, got str"),
    ]  # fmt: skip
    blobs, sizes, errors = zip(*cases, strict=True)
    served = unpack_raw(list(blobs), np.array(sizes, np.int32), max_pixels=40)
    assert [item.error for item in served] == list(errors)
    assert all(item.pixels is None for item in served)


def test_maps_of_different_sizes_are_nan_padded_not_resized() -> None:
    stacked = stack_maps([np.ones((2, 3), np.float32), None, np.zeros((4, 1), np.float32)])
    assert stacked.shape == (3, 4, 3) and stacked.dtype == np.float16
    assert np.all(stacked[0, :2, :3] == 1) and np.isnan(stacked[0, 2:]).all() and np.isnan(stacked[1]).all()


def test_image_bytes_decode_as_the_file_does(tmp_path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 4), dtype=np.uint8)  # BGRA with alpha
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), image)
    np.testing.assert_array_equal(decode_image_bytes(path.read_bytes(), None), read_image(path))


def test_an_oversized_header_is_refused_before_decoding() -> None:
    header_only = _png(5000, 4000)[:64]  # the size is in the header; the pixel data is cut away
    with pytest.raises(DatasetError, match="4000x5000"):
        decode_image_bytes(header_only, max_pixels=LIMIT, name="the image")
    with pytest.raises(DatasetError, match="cannot read"):
        decode_image_bytes(header_only, max_pixels=None)
