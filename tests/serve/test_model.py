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
from npgmf_edge.serve.model import MAP_OUTPUT, InspectorModel, check_raw, stack_maps

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


def test_raw_pixels_give_the_scores_of_the_files(served) -> None:
    model, paths, expected = served
    pixels = [read_image(p) for p in paths[:2]]
    oversized = np.zeros((1200, 1000, 3), np.uint8)
    responses = model.infer_raw([{"pixels": p[None]} for p in [*pixels, oversized]])
    scores = [r["score"][0, 0] for r in responses[:2]]
    assert scores == pytest.approx([e.score for e in expected[:2]], rel=1e-5)
    assert responses[2]["verdict"][0, 0] == b"error" and b"above the limit" in responses[2]["error"][0, 0]


def test_raw_items_of_the_wrong_type_rank_or_size_are_errors() -> None:
    grey, floats = np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)
    assert all("expected RGB uint8" in item.error for item in check_raw([grey, floats], None))
    empty = check_raw([np.zeros((0, 0, 3), np.uint8), np.zeros((5, 0, 3), np.uint8)], None)
    assert [item.error for item in empty] == [
        "the image is 0x0 pixels: it has no pixels to inspect",
        "the image is 0x5 pixels: it has no pixels to inspect",
    ]
    assert all(item.pixels is None for item in empty)


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
