"""The bundle self-test: golden images run at `Inspector.open`, a drifting precision refused in one line,
an explicit fallback that answers and says so, and `npgmf-edge verify BUNDLE` on a station."""

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from npgmf_edge.runtime import Inspector, read_manifest
from npgmf_edge.runtime.manifest import MANIFEST_FILE, SELF_HASH_KEY, graph_file, write_manifest
from npgmf_edge.runtime.platform_facts import cpu_features, describe, machine_facts
from npgmf_edge.runtime.selftest import (
    GOLDEN_IMAGES,
    LEGACY_FILE,
    MARGIN,
    PIXELS_FILE,
    REFERENCE_MAPS_FILE,
    SelfTestError,
    SelfTestResult,
    budget_for,
    choose_golden,
    map_digest,
    score_error,
    verdict_flips,
)


def rehash(bundle: Path, change=lambda manifest: None) -> None:
    """Write the bundle's manifest again over its current files (what an attacker or a bad copy cannot
    do without the toolkit; here it isolates the self-test from the SHA-256 check that would fire first)."""
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    for key in ("schema_version", "files", SELF_HASH_KEY):
        raw.pop(key)
    change(raw)
    write_manifest(bundle, raw)


def rehash_content(bundle: Path) -> None:
    """Recompute only the manifest's own content hash (keeps its schema_version, unlike `rehash`)."""
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    raw[SELF_HASH_KEY] = hashlib.sha256(
        json.dumps({k: v for k, v in raw.items() if k != SELF_HASH_KEY}, sort_keys=True).encode()
    ).hexdigest()
    (bundle / MANIFEST_FILE).write_text(json.dumps(raw))


@pytest.fixture(scope="module")
def drifting_bundle(graph_bundle, tmp_path_factory) -> Path:
    """The graph bundle with its INT8 weights changed as saturation would change them: every weight of
    magnitude above 32 clipped to 32 (int16 pair sums clipped to 32,767 lose the same large products)."""
    bundle = tmp_path_factory.mktemp("drift") / "bundle"
    shutil.copytree(graph_bundle, bundle)
    model = onnx.load(str(bundle / graph_file("int8")))
    for tensor in model.graph.initializer:
        weights = numpy_helper.to_array(tensor)
        if weights.dtype == np.int8 and weights.ndim >= 2:
            tensor.CopyFrom(numpy_helper.from_array(np.clip(weights, -32, 32).astype(np.int8), tensor.name))
    onnx.save(model, str(bundle / graph_file("int8")))
    rehash(bundle)
    return bundle


def test_every_precision_of_a_fresh_bundle_passes_its_self_test_at_open(graph_bundle) -> None:
    manifest = read_manifest(graph_bundle)
    entry = manifest.raw["selftest"]
    assert entry["images"] == GOLDEN_IMAGES and set(entry["precisions"]) == {"fp32", "int8"}
    machine = entry["machine"]
    assert "onnxruntime" in machine["backends"] and machine["cpu_features"] == cpu_features()
    for precision in ("fp32", "int8"):
        with Inspector.open(graph_bundle, precision=precision) as inspector:
            result = inspector.self_test
            assert result is not None and result.passed and result.images == GOLDEN_IMAGES
            assert result.seconds > 0 and inspector.precision == inspector.requested_precision == precision
            assert result.spread <= 1e-4  # the machine that exported it answers as it did then
    fp32 = entry["precisions"]["fp32"]
    assert fp32["score_error"] < 1e-4 and fp32["budget"] == pytest.approx(
        MARGIN["fp32"] + fp32["score_error"]
    )


def test_the_golden_set_holds_the_images_nearest_the_threshold(graph_bundle) -> None:
    """The stored pixels are validation images; the FP32 reference recomputed from them through the fp32
    graph; the images nearest the FP32 threshold are among them."""
    manifest = read_manifest(graph_bundle)
    entry = manifest.raw["selftest"]
    pixels = np.load(graph_bundle / PIXELS_FILE)
    reference_maps = np.load(graph_bundle / REFERENCE_MAPS_FILE)
    assert pixels.dtype == np.uint8 and pixels.shape == (
        GOLDEN_IMAGES,
        3,
        manifest.image_size,
        manifest.image_size,
    )
    assert reference_maps.dtype == np.dtype("<f4") and reference_maps.shape == (GOLDEN_IMAGES, 8, 8)
    assert entry["reference_threshold"] == manifest.calibration["fp32"].threshold
    with Inspector.open(graph_bundle, precision="fp32", self_test=False) as inspector:
        outputs = [inspector.run(pixels[i : i + 1].astype(np.float32)) for i in range(len(pixels))]
    np.testing.assert_allclose([o["score"][0] for o in outputs], entry["reference"], atol=1e-4)
    digests = map_digest(np.concatenate([o["fused"] for o in outputs]))
    np.testing.assert_allclose(digests, reference_maps, atol=1e-4)
    distance = np.sort(np.abs(np.array(entry["reference"]) - entry["reference_threshold"]))
    assert (distance[:8] <= distance[8:].min()).all()  # 8 nearest the threshold, then the spread


def test_a_drifting_int8_graph_is_refused_at_open_in_one_line(drifting_bundle) -> None:
    with pytest.raises(SelfTestError) as refused:
        Inspector.open(drifting_bundle, precision="int8")
    message = str(refused.value)
    assert "\n" not in message
    assert "the int8 graph fails its self-test" in message and "onnxruntime" in message
    assert describe(machine_facts()) in message  # what this machine is (CPU features, versions)
    assert "--precision fp32" in message and "--fallback fp32" in message
    error = float(message.split("its scores are ")[1].split()[0])
    budget = float(message.split("(budget ")[1].split(")")[0])
    assert error > 3 * budget  # clipped weights are far outside the budget, not at its edge
    with Inspector.open(drifting_bundle, precision="fp32") as fp32:  # the other graph still opens
        assert fp32.self_test.passed


def test_fallback_answers_in_fp32_and_says_so(drifting_bundle, tiny_run) -> None:
    image = tiny_run[1].test[0].image_path
    with Inspector.open(drifting_bundle, precision="int8", fallback="fp32") as inspector:
        assert (inspector.precision, inspector.requested_precision) == ("fp32", "int8")
        assert "int8 graph fails its self-test" in inspector.fallback_reason
        (answer,) = inspector.inspect([image])
    with Inspector.open(drifting_bundle, precision="fp32") as fp32:
        (expected,) = fp32.inspect([image])
    assert answer.precision == "fp32" and answer.score == expected.score


def test_verify_without_a_run_self_tests_a_station(cli, graph_bundle, drifting_bundle) -> None:
    code, out, _ = cli("verify", graph_bundle)
    assert code == 0 and out.count(" ok ") == 2
    code, out, _ = cli("verify", drifting_bundle, "--json")
    report = json.loads(out)
    assert code == 1 and not report["passed"]
    assert [(r["precision"], r["passed"]) for r in report["rows"]] == [("fp32", True), ("int8", False)]
    assert report["machine"]["cpu_features"] == cpu_features()


def test_predict_refuses_or_falls_back_as_asked(cli, drifting_bundle, tiny_run, tmp_path: Path) -> None:
    image = tiny_run[1].test[0].image_path
    code, _, err = cli("predict", drifting_bundle, image, "--out", tmp_path / "a", "--precision", "int8")
    assert code == 1 and err.count("\n") == 1 and "--fallback fp32" in err
    fallback = ("--precision", "int8", "--fallback", "fp32")
    code, out, _ = cli("predict", drifting_bundle, image, "--out", tmp_path / "b", *fallback)
    assert code == 0 and "answered in fp32, not int8" in out
    summary = json.loads((tmp_path / "b" / "predictions.json").read_text())
    assert summary["precision"] == "fp32" and summary["predictions"][0]["precision"] == "fp32"


def test_a_bundle_from_before_the_self_test_still_opens(graph_bundle, tmp_path: Path, caplog) -> None:
    """Schema 1 (before the self-test was mandatory); schema 2 refuses it (test_bundle_trust.py)."""
    bundle = tmp_path / "old"
    shutil.copytree(graph_bundle, bundle)
    rehash(bundle, lambda manifest: (manifest.pop("selftest"), manifest.update(schema_version=1)))
    with Inspector.open(bundle, precision="int8") as inspector:
        assert inspector.self_test is None
    assert "no self-test images" in caplog.text


def test_golden_images_nearest_the_threshold_then_spread_over_the_rest() -> None:
    scores = np.array([5.0, 1.0, 4.0, 2.0, 3.0])
    # nearest 3.9: image 2 (4.0); the rest by score 1.0, 2.0, 3.0, 5.0 -> its lowest and highest
    assert choose_golden(scores, 3.9, count=3, near=1).tolist() == [0, 1, 2]
    # nearest 2.6: images 4 (3.0) and 3 (2.0); the rest 1.0, 4.0, 5.0 -> lowest and highest
    assert choose_golden(scores, 2.6, count=4, near=2).tolist() == [0, 1, 3, 4]
    assert choose_golden(np.array([2.0, 1.0]), 1.5, count=12).tolist() == [0, 1]


def test_budgets_and_verdict_flips_hand_computed() -> None:
    fp32 = np.array([1.1, 2.5, 0.2])
    here = np.array([1.0, 2.0, 0.2])
    assert score_error(here, fp32) == pytest.approx((0.1 + 0.5 + 0.0) / 3)
    assert budget_for("int8", score_error(here, fp32)) == pytest.approx(0.2 + MARGIN["int8"])
    assert budget_for("fp32", 0.0) == MARGIN["fp32"]
    assert np.isnan(score_error(np.array([np.nan, 1.0, 0.2]), fp32))
    # thresholds 1.05 here and 2.0 for FP32: image 0 anomalous here only (1.0 > 1.05 is False: normal),
    # image 1 anomalous in both, image 2 normal in both -> 0 flips; at 0.5 here: image 0 flips
    assert verdict_flips(here, 1.05, fp32, 2.0) == 0
    assert verdict_flips(here, 0.5, fp32, 2.0) == 1


def test_map_digest_is_the_block_mean() -> None:
    fused = np.zeros((1, 16, 16), np.float32)
    fused[0, :2, :2] = 1.0
    fused[0, 2:4, 2:4] = 3.0
    fused[0, 15, 15] = 4.0  # one of four pixels of the last block
    digest = map_digest(fused)
    assert digest.shape == (1, 8, 8)
    assert digest[0, 0, 0] == 1.0 and digest[0, 1, 1] == 3.0 and digest[0, 7, 7] == 1.0
    assert digest.sum() == pytest.approx(1.0 + 3.0 + 1.0)


def test_a_non_finite_result_never_passes() -> None:
    result = SelfTestResult("int8", "onnxruntime", 4, float("nan"), 1.0, 0.0, 1.0, 0, 1, 0.0, 0.1)
    assert not result.passed
    result = SelfTestResult("int8", "onnxruntime", 4, 0.0, 1.0, float("nan"), 1.0, 0, 1, 0.0, 0.1)
    assert not result.passed
    assert not SelfTestResult("int8", "onnxruntime", 4, 0.0, 1.0, None, None, 2, 1, 0.0, 0.1).passed


def test_a_schema_2_bundle_is_judged_against_its_fp32_reference(graph_bundle, tmp_path: Path) -> None:
    """The previous format (one selftest.npz, tolerances against the export machine's own answers) is
    migrated: budgets from its stored scores and FP32 reference, the map check where the FP32 digest is
    stored (fp32 here), verdicts against the FP32 threshold."""
    bundle = tmp_path / "v2"
    shutil.copytree(graph_bundle, bundle)
    entry = read_manifest(bundle).raw["selftest"]
    pixels, maps = np.load(bundle / PIXELS_FILE), np.load(bundle / REFERENCE_MAPS_FILE)
    np.savez(bundle / LEGACY_FILE, pixels=pixels, digest_fp32=maps, digest_int8=maps)
    for name in (PIXELS_FILE, REFERENCE_MAPS_FILE):
        (bundle / name).unlink()
    old = {
        "file": LEGACY_FILE,
        "images": entry["images"],
        "digest_grid": 8,
        "reference": entry["reference"],
        "precisions": {p: {"scores": e["scores"], "tolerance": 0.01} for p, e in entry["precisions"].items()},
        "machine": entry["machine"],
    }
    rehash(bundle, lambda manifest: manifest.update(selftest=old))
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    raw["schema_version"] = 2
    (bundle / MANIFEST_FILE).write_text(json.dumps(raw))
    rehash_content(bundle)
    migrated = read_manifest(bundle).raw["selftest"]
    assert "legacy_file" in migrated and "tolerance" not in migrated["precisions"]["int8"]
    assert migrated["precisions"]["int8"]["budget"] == pytest.approx(entry["precisions"]["int8"]["budget"])
    for precision, checks_maps in (("fp32", True), ("int8", False)):
        with Inspector.open(bundle, precision=precision) as inspector:
            result = inspector.self_test
            assert result.passed and (result.map_error is not None) == checks_maps
            assert result.verdict_flips is not None and result.images == entry["images"]


CPUINFO_EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx avx2 fma f16c bmi2\n"
CPUID_EPYC = {"SSE2": True, "AVX": True, "AVX2": True, "FMA3": True, "F16C": True, "AVX512F": False}
CPUINFO_ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp asimdhp i8mm\nCPU part\t: 0xd0c\n"
CPUID_ARM = {"NEON": True, "ASIMD": True, "ASIMDDP": True, "ASIMDHP": True}
# qemu-x86_64 -cpu Haswell on this VM: the emulated CPUID says AVX2, /proc/cpuinfo still shows the host.
CPUINFO_HOST = "flags\t\t: avx2 fma f16c avx512f avx512bw avx512_vnni avx_vnni\n"
CPUID_HASWELL = {"AVX": True, "AVX2": True, "FMA3": True, "F16C": True}
CPUID_ALDER_LAKE = {"AVX": True, "AVX2": True, "FMA3": True, "F16C": True}  # AVX-VNNI, no AVX-512


def test_cpu_features_and_their_description() -> None:
    assert cpu_features(CPUINFO_EPYC, CPUID_EPYC) == ["avx2", "f16c", "fma"]
    assert cpu_features(CPUINFO_ARM, CPUID_ARM) == ["asimd", "asimddp", "asimdhp", "i8mm"]
    assert cpu_features(CPUINFO_HOST, CPUID_HASWELL) == ["avx2", "f16c", "fma"]  # not the host's VNNI
    alder_lake = "flags\t\t: avx2 fma f16c avx_vnni\n"
    assert cpu_features(alder_lake, CPUID_ALDER_LAKE) == ["avx2", "avx_vnni", "f16c", "fma"]
    epyc = {"machine": "x86_64", "cpu_features": ["avx2", "fma"], "backends": {"onnxruntime": "1.32.0"}}
    assert describe(epyc) == "x86_64 with avx2, fma (no VNNI); onnxruntime 1.32.0"
    arm = {"machine": "aarch64", "cpu_features": ["asimddp"], "backends": {}}
    assert describe(arm) == "aarch64 with asimddp; no backend"


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.slow
@pytest.mark.skipif(
    QEMU is None or platform.machine() != "x86_64",
    reason="needs qemu-user on x86_64 (Debian: apt-get install qemu-user) to emulate a CPU without VNNI",
)
def test_the_bundle_passes_its_self_test_on_an_emulated_cpu_without_vnni(
    graph_bundle, drifting_bundle
) -> None:
    """`-cpu Haswell` reports AVX2 and FMA but no AVX-512 and no VNNI: onnxruntime takes the vpmaddubsw
    kernels whose int16 pair sums saturate. The bundle exported here must pass its self-test there, and
    the clipped-weights bundle's INT8 must still be refused there."""
    code = "import sys; from npgmf_edge.cli import main; sys.argv[0] = 'npgmf-edge'; main()"

    def verify(bundle: Path) -> subprocess.CompletedProcess:
        command = [QEMU, "-cpu", "Haswell", sys.executable, "-c", code, "verify", str(bundle), "--json"]
        return subprocess.run(command, capture_output=True, text=True, timeout=1200)

    refused = json.loads(verify(drifting_bundle).stdout)
    assert [(row["precision"], row["passed"]) for row in refused["rows"]] == [("fp32", True), ("int8", False)]
    done = verify(graph_bundle)
    report = json.loads(done.stdout)
    features = set(report["machine"]["cpu_features"])
    assert "avx2" in features and not features & {"avx512_vnni", "avx_vnni", "avx512f"}
    assert done.returncode == 0 and report["passed"], done.stdout
    assert {row["precision"] for row in report["rows"]} == {"fp32", "int8"}


QEMU_AARCH64 = shutil.which("qemu-aarch64") or (shutil.which("apt-get") if os.geteuid() == 0 else None)


@pytest.mark.slow
@pytest.mark.skipif(
    QEMU_AARCH64 is None or platform.machine() != "x86_64",
    reason="needs x86_64 with qemu-user (Debian: apt-get install qemu-user; as root the script installs it)",
)
def test_the_bundle_passes_on_emulated_aarch64_with_the_verdicts_of_x86(
    graph_bundle, drifting_bundle, tiny_run
) -> None:
    """scripts/check_aarch64.py: a Debian arm64 Python with aarch64 wheels of the versions installed here,
    under `qemu-aarch64 -cpu cortex-a76` (ARMv8.2 + dotprod, as Orin's A78AE) and `-cpu max` (SVE2, i8mm):
    every precision passes its self-test, every test image gets the verdict it gets on x86, and the
    clipped-weights bundle's INT8 is refused there too."""
    samples = tiny_run[1].test
    images = [samples[i].image_path for i in np.linspace(0, len(samples) - 1, num=6).round().astype(int)]
    script = Path(__file__).resolve().parents[2] / "scripts" / "check_aarch64.py"
    command = [sys.executable, str(script), str(graph_bundle), *map(str, images), "--limit", "0"]
    done = subprocess.run(
        [*command, "--refused", str(drifting_bundle)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    report = json.loads(done.stdout)
    print(done.stdout)  # the numbers behind docs/BENCHMARKS.md's margin table (pytest -s shows them)
    assert done.returncode == 0 and report["passed"], report["problems"] or done.stderr[-3000:]
    runs = report["runs"]
    assert set(runs) == {"x86_64", "cortex-a76", "max"}
    assert runs["cortex-a76"]["verify"]["machine"]["machine"] == "aarch64"
    assert "asimddp" in runs["cortex-a76"]["verify"]["machine"]["cpu_features"]
    assert {"sve", "sve2", "i8mm"} <= set(runs["max"]["verify"]["machine"]["cpu_features"])
    for run in runs.values():
        assert [row["precision"] for row in run["verify"]["rows"]] == ["fp32", "int8"]
        assert all(row["passed"] for row in run["verify"]["rows"])
        assert run["verdicts"] == runs["x86_64"]["verdicts"] and len(run["verdicts"]["int8"]) == 6
        assert "int8 graph fails its self-test" in run["refused"][str(drifting_bundle)]
