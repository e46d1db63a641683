"""Property tests (hypothesis, bounded to a few seconds): whatever bytes or JSON values arrive, decoding and
parsing end in an image / a parsed object or in the toolkit's own error type, never in another exception."""

import contextlib
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npgmf_edge.calibration import Calibration
from npgmf_edge.config import NpgmfConfig, get_preset
from npgmf_edge.data import decode_inputs
from npgmf_edge.errors import BundleError, CheckpointError, ConfigError
from npgmf_edge.rundir import RUN_MANIFEST, check_run_files
from npgmf_edge.runtime.manifest import MANIFEST_FILE, SELF_HASH_KEY, _content_sha256, read_manifest

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
