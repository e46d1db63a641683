"""Property tests (hypothesis, bounded to a few seconds): whatever bytes or JSON values arrive, decoding and
parsing end in an image / a parsed object or in the toolkit's own error type, never in another exception."""

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npgmf_edge.calibration import Calibration
from npgmf_edge.config import NpgmfConfig, get_preset
from npgmf_edge.data import decode_inputs
from npgmf_edge.errors import BundleError, CheckpointError, ConfigError
from npgmf_edge.rundir import RUN_MANIFEST, check_run_files
from npgmf_edge.runtime.manifest import (
    CORESET_FAISS,
    MANIFEST_FILE,
    SELF_HASH_KEY,
    _content_sha256,
    read_manifest,
    sha256_file,
)

BOUNDED = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_, PNG = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))
PNG_BYTES = PNG.tobytes()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _decoded(data: bytes, suffix: str) -> np.ndarray | str:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"input{suffix}"
        path.write_bytes(data)
        (item,) = decode_inputs([path])
    return item


def _is_image_or_reason(item: np.ndarray | str) -> bool:
    if isinstance(item, str):
        return item.startswith("cannot read image ") or " too large to decode " in item
    return item.dtype == np.uint8 and item.ndim == 3 and item.shape[2] == 3


@BOUNDED
@given(st.binary(max_size=256), st.sampled_from([".png", ".jpg", ".tiff", ".bmp"]))
def test_random_bytes_decode_to_an_image_or_a_reason(data: bytes, suffix: str) -> None:
    assert _is_image_or_reason(_decoded(data, suffix))


@BOUNDED
@given(st.integers(0, len(PNG_BYTES)), st.integers(0, len(PNG_BYTES) - 1), st.integers(1, 255))
def test_truncated_or_corrupted_pngs_decode_to_an_image_or_a_reason(keep: int, at: int, flip: int) -> None:
    data = bytearray(PNG_BYTES)
    data[at] ^= flip
    assert _is_image_or_reason(_decoded(bytes(data[:keep]), ".png"))


def _mutated(base: dict, key_path: list[str], value) -> dict:
    data = json.loads(json.dumps(base))
    target = data
    for key in key_path[:-1]:
        target = target[key] if isinstance(target.get(key), dict) else target
    target[key_path[-1]] = value
    return data


CONFIG = get_preset("tiny").to_dict()
CONFIG_KEYS = [[k] for k in CONFIG] + [[k, n] for k, v in CONFIG.items() if isinstance(v, dict) for n in v]


@BOUNDED
@given(st.sampled_from(CONFIG_KEYS), json_values)
def test_a_config_with_any_value_anywhere_loads_or_is_a_config_error(key_path: list[str], value) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.json"
        path.write_text(json.dumps(_mutated(CONFIG, key_path, value)))
        with contextlib.suppress(ConfigError):
            NpgmfConfig.load(path)


CALIBRATION = {
    "structural": {"mean": 1.0, "std": 0.5},
    "logical": {"mean": 0.2, "std": 0.1},
    "weight_structural": 1.0,
    "weight_logical": 3.0,
    "gaussian_sigma": 2.0,
    "threshold": 4.5,
    "false_alarm_rate": 0.01,
    "n_validation_images": 20,
}
CALIBRATION_KEYS = [[k] for k in CALIBRATION] + [
    [b, s] for b in ("structural", "logical") for s in ("mean", "std")
]


@BOUNDED
@given(st.sampled_from(CALIBRATION_KEYS), json_values)
def test_a_calibration_with_any_value_anywhere_is_finite_or_a_value_error(key_path: list[str], value) -> None:
    try:
        calibration = Calibration.from_dict(_mutated(CALIBRATION, key_path, value))
    except ValueError:
        return
    assert np.isfinite(calibration.threshold) and np.isfinite(calibration.logical.std)


@BOUNDED
@given(json_values)
def test_any_json_as_a_run_manifest_is_checked_or_a_checkpoint_error(value) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / RUN_MANIFEST).write_text(json.dumps(value))
        with contextlib.suppress(CheckpointError):
            check_run_files(Path(folder))


@BOUNDED
@given(
    st.dictionaries(
        st.sampled_from(["schema_version", "files", "knn", "input", "graphs", "calibration"]), json_values
    )
)
def test_any_json_as_a_bundle_manifest_is_a_bundle_error(value: dict) -> None:
    value[SELF_HASH_KEY] = _content_sha256(value)  # past the self-hash: the parsing itself must hold
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / MANIFEST_FILE).write_text(json.dumps(value))
        try:
            read_manifest(Path(folder))
        except BundleError:
            return
    raise AssertionError(f"a bundle manifest without graphs was accepted: {value}")


# --- a real bundle's manifest and FAISS index, mutated with their hashes recomputed (issue 24) ---------
# Past the hashes, only the parsing and the checks stand between a value and the station. Each example
# goes through `Inspector.open`, `verify BUNDLE` and `predict` in-process: a legitimate open (every
# invariant below holds) or one line of the toolkit's own error, never a traceback, never "ok" for an
# impossible value. The default suite runs a bounded number; `-m slow` runs many more.

FUZZ_DEFAULT = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FUZZ_SLOW = settings(FUZZ_DEFAULT, max_examples=300)
EXTREMES = [
    0,
    -1,
    1,
    2**31,
    10**12,
    -(10**12),
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    0.5,
    "",
    True,
    None,
]


def _node_paths(value, prefix: tuple = ()) -> list[tuple]:
    """Every key or index path of a JSON value, its containers included."""
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return paths
    for key, child in items:
        if prefix or key != SELF_HASH_KEY:
            paths.extend(_node_paths(child, (*prefix, key)))
    return paths


def _apply(manifest: dict, path: tuple, kind: str, value) -> dict:
    data = json.loads(json.dumps(manifest))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    old = parent[path[-1]]
    if kind == "delete":
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
        return data
    parent[path[-1]] = {"nest": [old], "wrap": {"value": old}, "deep": [[[[[[old]]]]]]}.get(kind, value)
    return data


mutations = st.one_of(
    st.tuples(st.just("replace"), json_values),
    st.tuples(st.just("range"), st.sampled_from(EXTREMES)),
    st.tuples(st.sampled_from(["nest", "wrap", "deep", "delete"]), st.none()),
)


def _assert_legitimate(manifest) -> None:
    """What a manifest that opens must satisfy, checked here independently of `read_manifest`."""
    from npgmf_edge.runtime.selftest import MARGIN

    raw = manifest.raw
    assert 8 <= manifest.image_size <= 8192 and 1 <= manifest.max_batch <= 4096
    assert set(raw["files"]) >= {g.file for g in manifest.graphs.values()}
    assert all("/" not in name and name not in ("..", ".") for name in raw["files"])
    for spec in manifest.graphs.values():
        assert spec.input_shape == (3, manifest.image_size, manifest.image_size)
    for cal in manifest.calibration.values():
        assert cal.structural.std > 0 and cal.logical.std > 0 and 0 <= cal.false_alarm_rate <= 1
        assert np.isfinite(cal.threshold) and cal.gaussian_sigma >= 0
    entry = raw["selftest"]
    for precision, expected in entry["precisions"].items():
        error = np.abs(np.array(expected["scores"]) - np.array(entry["reference"])).mean()
        assert 0 <= expected["budget"] <= (error + MARGIN[precision]) * (1 + 1e-9)
    if manifest.knn == "faiss":
        assert manifest.coreset["count"] >= 1 and manifest.coreset["dim"] >= 1


def _one_line_or_legitimate(bundle: Path, cli, image: Path, out: Path) -> None:
    from npgmf_edge.errors import NpgmfError
    from npgmf_edge.runtime import Inspector

    try:
        with Inspector.open(bundle) as inspector:
            _assert_legitimate(inspector.manifest)
            opened = True
    except NpgmfError as exc:
        assert "\n" not in str(exc), str(exc)
        opened = False
    for args in (("verify", bundle), ("predict", bundle, image, "--out", out)):
        code, stdout, err = cli(*args)
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert "Traceback" not in err and len(errors) <= 1, err
        if code == 0 or (stdout and args[0] == "predict"):  # ok, or predict's rows: the bundle opened
            assert opened, f"{args[0]} accepted a bundle that Inspector.open refused: {stdout}"
        elif stdout:  # verify's table: a self-test failed, and so Inspector.open refused it too
            assert "FAILS" in stdout and not opened, stdout
        else:
            assert err.endswith("\n") and errors == [err.splitlines()[-1]], (code, stdout, err)


class _Bundles(dict):
    def __repr__(self) -> str:  # hypothesis prints its arguments: not the two manifests
        return "fuzz_bundles"


@pytest.fixture(scope="module")
def fuzz_bundles(faiss_bundle, graph_bundle, tiny_run, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fuzz")
    copies = {
        name: shutil.copytree(b, root / name)
        for name, b in (("faiss", faiss_bundle), ("graph", graph_bundle))
    }
    originals = {name: (b / MANIFEST_FILE).read_bytes() for name, b in copies.items()}
    return _Bundles(copies=copies, originals=originals, image=tiny_run[1].test[0].image_path, out=root / "p")


def _fuzz_manifest(fuzz_bundles, cli, data, name: str) -> None:
    bundle, original = fuzz_bundles["copies"][name], fuzz_bundles["originals"][name]
    manifest = json.loads(original)
    path = data.draw(st.sampled_from(_node_paths(manifest)), label="path")
    kind, value = data.draw(mutations, label="mutation")
    mutated = _apply(manifest, path, kind, value)
    mutated[SELF_HASH_KEY] = _content_sha256(mutated)
    try:
        (bundle / MANIFEST_FILE).write_text(json.dumps(mutated))
        _one_line_or_legitimate(bundle, cli, fuzz_bundles["image"], fuzz_bundles["out"])
    finally:
        (bundle / MANIFEST_FILE).write_bytes(original)


@FUZZ_DEFAULT
@given(st.data(), st.sampled_from(["faiss", "graph"]))
def test_any_field_of_a_real_manifest_mutated_opens_legitimately_or_is_one_line(
    fuzz_bundles, cli, data, name: str
) -> None:
    _fuzz_manifest(fuzz_bundles, cli, data, name)


@pytest.mark.slow
@FUZZ_SLOW
@given(st.data(), st.sampled_from(["faiss", "graph"]))
def test_many_mutated_manifests_open_legitimately_or_are_one_line(fuzz_bundles, cli, data, name: str) -> None:
    _fuzz_manifest(fuzz_bundles, cli, data, name)


def _fuzz_faiss(fuzz_bundles, cli, keep: float, at: float, flip: int) -> None:
    bundle = fuzz_bundles["copies"]["faiss"]
    index = bundle / CORESET_FAISS
    original_index, original_manifest = index.read_bytes(), fuzz_bundles["originals"]["faiss"]
    data = bytearray(original_index)
    data[int(at * (len(data) - 1))] ^= flip
    data = (
        bytes(data[: int(keep * len(data))])
        if keep < 1
        else bytes(data) + bytes(data)[: int((keep - 1) * 64)]
    )
    manifest = json.loads(original_manifest)
    index.write_bytes(data)
    manifest["files"][CORESET_FAISS] = sha256_file(index)
    manifest[SELF_HASH_KEY] = _content_sha256(manifest)
    try:
        (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
        _one_line_or_legitimate(bundle, cli, fuzz_bundles["image"], fuzz_bundles["out"])
    finally:
        index.write_bytes(original_index)
        (bundle / MANIFEST_FILE).write_bytes(original_manifest)


# Offsets skewed to the header (the first 64 bytes), where a flipped bit changes a count or a type.
faiss_offsets = st.one_of(st.floats(0, 0.002), st.floats(0, 1))


@FUZZ_DEFAULT
@given(st.sampled_from([0.0, 0.01, 0.5, 0.999, 1.0, 1.5, 2.0]), faiss_offsets, st.integers(1, 255))
def test_a_mutated_or_truncated_faiss_index_with_its_hash_recomputed_is_one_line(
    fuzz_bundles, cli, keep: float, at: float, flip: int
) -> None:
    _fuzz_faiss(fuzz_bundles, cli, keep, at, flip)


@pytest.mark.slow
@FUZZ_SLOW
@given(st.floats(0, 2), faiss_offsets, st.integers(1, 255))
def test_many_mutated_faiss_indexes_are_one_line(
    fuzz_bundles, cli, keep: float, at: float, flip: int
) -> None:
    _fuzz_faiss(fuzz_bundles, cli, keep, at, flip)
