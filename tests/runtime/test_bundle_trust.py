"""Issue 24: what a station can trust in a bundle. Signed bundles (a station with --trust refuses unsigned,
foreign-key and edited ones in one line), manifest hardening (named files inside the bundle and hashed, the
self-test mandatory and its tolerance bounded), and the probe's tracebacks, each now one line.

The repro inputs are the probe's: the threshold edited and `manifest_sha256` recomputed; a graph `file`
that is absolute or holds `..`; the `selftest` entry deleted; the tolerance raised; `max_batch` 0 or
negative; `size` 0; 200k nested `[`; a truncated or inflated `coreset.faiss` with a matching hash; a bundle
without its manifest.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from npgmf_edge.errors import BundleError
from npgmf_edge.runtime import Inspector, read_manifest
from npgmf_edge.runtime.manifest import (
    CORESET_FAISS,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    SELF_HASH_KEY,
    _content_sha256,
    graph_file,
    sha256_file,
)
from npgmf_edge.runtime.selftest import MARGIN
from npgmf_edge.runtime.signing import SIGNATURE_FILE, SignatureError, generate_key_pair


def edit_manifest(bundle: Path, change) -> None:
    """What anyone who can write the bundle can do: change the manifest and recompute its own hash."""
    data = json.loads((bundle / MANIFEST_FILE).read_text())
    change(data)
    data[SELF_HASH_KEY] = _content_sha256(data)
    (bundle / MANIFEST_FILE).write_text(json.dumps(data, indent=2))


def rehash_file(bundle: Path, name: str) -> None:
    edit_manifest(bundle, lambda d: d["files"].update({name: sha256_file(bundle / name)}))


def raise_threshold(data: dict) -> None:
    for calibration in data["calibration"].values():
        calibration["threshold"] = -1e6  # every image anomalous


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("keys")
    return {name: generate_key_pair(root / name) for name in ("ours", "other")}


@pytest.fixture
def bundle(graph_bundle, tmp_path: Path) -> Path:
    return Path(shutil.copytree(graph_bundle, tmp_path / "bundle"))


@pytest.fixture
def faiss_copy(faiss_bundle, tmp_path: Path) -> Path:
    return Path(shutil.copytree(faiss_bundle, tmp_path / "faiss"))


def one_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# --- signed bundles -----------------------------------------------------------------------------------


def test_export_sign_key_makes_a_bundle_a_trusting_station_verifies(cli, tiny_run, keys, tmp_path) -> None:
    private, public = keys["ours"]
    out = tmp_path / "signed"
    code, stdout, _ = cli("export", tiny_run[0], "--out", out, "--no-tensorrt", "--sign-key", private)
    assert code == 0 and "signed:    key" in stdout
    assert (out / SIGNATURE_FILE).is_file() and SIGNATURE_FILE not in read_manifest(out).raw["files"]
    code, stdout, err = cli("verify", out, "--trust", public)
    assert (code, err) == (0, "") and "fp32      ok" in stdout
    with Inspector.open(out, trust=public.parent) as inspector:  # a folder of trusted keys
        assert inspector.self_test.passed


def test_a_signed_bundle_edited_after_signing_is_refused_where_the_key_is_trusted(
    cli, bundle, keys, tiny_run, tmp_path
) -> None:
    private, public = keys["ours"]
    code, _, _ = cli("sign", bundle, "--key", private)
    assert code == 0
    assert cli("verify", bundle, "--trust", public)[0] == 0
    edit_manifest(bundle, raise_threshold)  # the probe: threshold edited, manifest_sha256 recomputed
    # Without a trust setting, as before: the hashes only catch damage, so the edit goes through.
    assert read_manifest(bundle).calibration["fp32"].threshold == -1e6
    code, stdout, err = cli("verify", bundle, "--trust", public)
    assert (code, stdout) == (1, "")
    assert "was changed after it was signed" in one_line(err)
    image = tiny_run[1].test[0].image_path
    code, _, err = cli("predict", bundle, image, "--out", tmp_path / "p", "--trust", public)
    assert code == 1 and "was changed after it was signed" in one_line(err)
    assert not (tmp_path / "p").exists()
    with pytest.raises(SignatureError, match="changed after it was signed"):
        Inspector.open(bundle, trust=public)


def test_a_trusting_station_refuses_an_unsigned_bundle_and_one_signed_by_another_key(
    cli, bundle, keys
) -> None:
    public = keys["ours"][1]
    code, _, err = cli("verify", bundle, "--trust", public)
    assert code == 1 and f"{bundle} is not signed (no {SIGNATURE_FILE})" in one_line(err)
    assert cli("sign", bundle, "--key", keys["other"][0])[0] == 0
    code, _, err = cli("verify", bundle, "--trust", public)
    assert code == 1 and "which this station does not trust" in one_line(err)
    with pytest.raises(SignatureError, match="does not trust"):
        Inspector.open(bundle, trust=public)
    assert cli("verify", bundle)[0] == 0  # no trust setting: as before


def test_sign_refuses_a_damaged_bundle_and_keygen_never_replaces_a_key(cli, bundle, keys) -> None:
    graph = bundle / graph_file("fp32")
    graph.write_bytes(graph.read_bytes() + b"\0")
    code, _, err = cli("sign", bundle, "--key", keys["ours"][0])
    assert code == 1 and "does not match the SHA-256" in one_line(err)
    assert not (bundle / SIGNATURE_FILE).exists()
    code, _, err = cli("keygen", "--out", keys["ours"][0].parent)
    assert code == 1 and "keygen never replaces a key" in one_line(err)
    assert oct(keys["ours"][0].stat().st_mode & 0o777) == "0o600"


def test_a_public_key_is_not_a_signing_key(cli, bundle, keys) -> None:
    code, _, err = cli("sign", bundle, "--key", keys["ours"][1])
    assert code == 1 and "is not an unencrypted PEM private key" in one_line(err)


# --- manifest hardening ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/etc/hostname", "not a plain file name inside the bundle"),
        ("../model.fp32.onnx", "not a plain file name inside the bundle"),
        ("sub/model.fp32.onnx", "not a plain file name inside the bundle"),
        ("unlisted.onnx", "not among the hashed files"),
    ],
)
def test_a_graph_file_outside_the_bundle_or_unhashed_is_refused(bundle, name: str, expected: str) -> None:
    edit_manifest(bundle, lambda d: d["graphs"]["fp32"].update(file=name))
    with pytest.raises(BundleError, match=expected) as refused:
        Inspector.open(bundle)
    assert "\n" not in str(refused.value) and "graphs.fp32.file" in str(refused.value)


def test_a_hashed_file_that_is_a_symlink_out_of_the_bundle_is_refused(bundle, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(bundle / graph_file("fp32"), outside)
    (bundle / graph_file("fp32")).unlink()
    os.symlink(outside, bundle / graph_file("fp32"))  # same bytes, same hash: only the place differs
    with pytest.raises(BundleError, match="leads outside the bundle"):
        read_manifest(bundle)


def test_a_manifest_with_its_selftest_deleted_is_refused(bundle) -> None:
    edit_manifest(bundle, lambda d: d.pop("selftest"))
    with pytest.raises(BundleError, match=f"no selftest section, which schema {SCHEMA_VERSION} requires"):
        Inspector.open(bundle)


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [("budget", 1e9, "budget"), ("map_budget", 1e9, "map budget"), ("max_flips", 12, "verdict allowance")],
)
def test_a_raised_selftest_budget_is_refused(bundle, field: str, value: float, what: str) -> None:
    edit_manifest(bundle, lambda d: d["selftest"]["precisions"]["int8"].update({field: value}))
    with pytest.raises(BundleError, match=f"int8 self-test {what} .* is above what the export"):
        read_manifest(bundle)


def test_the_budget_is_what_the_export_measured_plus_the_margin(graph_bundle) -> None:
    """Recomputed by hand from the stored numbers: mean |int8 score - FP32 reference| + the int8 margin,
    and the verdicts that differ from FP32's + one."""
    entry = read_manifest(graph_bundle).raw["selftest"]
    reference, int8 = entry["reference"], entry["precisions"]["int8"]
    error = sum(abs(a - b) for a, b in zip(int8["scores"], reference, strict=True)) / len(reference)
    assert int8["score_error"] == pytest.approx(error)
    assert int8["budget"] == pytest.approx(error + MARGIN["int8"])
    threshold = read_manifest(graph_bundle).calibration["int8"].threshold
    flips = sum(
        (a > threshold) != (b > entry["reference_threshold"])
        for a, b in zip(int8["scores"], reference, strict=True)
    )
    assert int8["max_flips"] == flips + 1


# --- tracebacks -> one line -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("max_batch", 0), ("max_batch", -3), ("size", 0), ("size", 10**9), ("size", "64")]
)
def test_an_impossible_input_size_or_batch_is_one_line_and_verify_never_says_ok(
    cli, bundle, field: str, value
) -> None:
    edit_manifest(bundle, lambda d: d["input"].update({field: value}))
    code, stdout, err = cli("verify", bundle)
    assert (code, stdout) == (1, "")
    assert f"input.{field} must be an integer" in one_line(err)


def test_an_input_size_the_graphs_do_not_take_is_refused(bundle) -> None:
    edit_manifest(bundle, lambda d: d["input"].update(size=96))
    with pytest.raises(BundleError, match=r"takes input \[3, 128, 128\], but input.size is 96"):
        read_manifest(bundle)


def test_a_manifest_of_200k_nested_brackets_is_one_line(cli, bundle) -> None:
    (bundle / MANIFEST_FILE).write_text("[" * 200_000)
    code, _, err = cli("verify", bundle)
    assert code == 1 and "nested deeper than 32 levels" in one_line(err)


@pytest.mark.parametrize("change", ["truncated", "inflated", "header"])
def test_a_damaged_faiss_index_with_a_matching_hash_is_one_line(cli, faiss_copy, change: str) -> None:
    index = faiss_copy / CORESET_FAISS
    data = index.read_bytes()
    if change == "truncated":
        data = data[: len(data) // 2]
    elif change == "inflated":
        data = data + data
    else:  # ntotal in the IndexFlat header (after the fourcc and d) claims 2^40 vectors
        data = data[:8] + (1 << 40).to_bytes(8, "little") + data[16:]
    index.write_bytes(data)
    rehash_file(faiss_copy, CORESET_FAISS)
    code, _, err = cli("verify", faiss_copy)
    assert code == 1 and str(index) in one_line(err)


def test_a_folder_without_a_manifest_is_not_called_a_run_directory(cli, bundle, tiny_run, tmp_path) -> None:
    (bundle / MANIFEST_FILE).unlink()
    code, _, err = cli("predict", bundle, tiny_run[1].test[0].image_path, "--out", tmp_path / "p")
    assert code == 1 and f"no {MANIFEST_FILE} in {bundle}" in one_line(err)
    assert "not a run directory" not in err
    code, _, err = cli("verify", bundle)
    assert code == 1 and f"no {MANIFEST_FILE} in {bundle}" in one_line(err)
