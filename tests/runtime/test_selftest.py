"""The bundle self-test: golden images run at `Inspector.open`, a drifting precision refused in one line,
an explicit fallback that answers and says so, and `npgmf-edge verify BUNDLE` on a station."""

import json
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
    FP32_TOLERANCE,
    SelfTestError,
    SelfTestResult,
    choose_golden,
    map_digest,
    tolerance_for,
)


def rehash(bundle: Path, change=lambda manifest: None) -> None:
    """Write the bundle's manifest again over its current files (what an attacker or a bad copy cannot
    do without the toolkit; here it isolates the self-test from the SHA-256 check that would fire first)."""
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    for key in ("schema_version", "files", SELF_HASH_KEY):
        raw.pop(key)
    change(raw)
    write_manifest(bundle, raw)


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
    assert entry["images"] == 4 and set(entry["precisions"]) == {"fp32", "int8"}
    machine = entry["machine"]
    assert "onnxruntime" in machine["backends"] and machine["cpu_features"] == cpu_features()
    for precision in ("fp32", "int8"):
        with Inspector.open(graph_bundle, precision=precision) as inspector:
            result = inspector.self_test
            assert result is not None and result.passed and result.images == 4
            assert result.seconds > 0 and inspector.precision == inspector.requested_precision == precision
    assert entry["precisions"]["fp32"]["tolerance"] == FP32_TOLERANCE


def test_a_drifting_int8_graph_is_refused_at_open_in_one_line(drifting_bundle) -> None:
    with pytest.raises(SelfTestError) as refused:
        Inspector.open(drifting_bundle, precision="int8")
    message = str(refused.value)
    assert "\n" not in message
    assert "the int8 graph fails its self-test" in message and "onnxruntime" in message
    assert describe(machine_facts()) in message  # what this machine is (CPU features, versions)
    assert "--precision fp32" in message and "--fallback fp32" in message
    drift = float(message.split("scores drift by ")[1].split()[0])
    tolerance = float(message.split("(tolerance ")[1].split(")")[0])
    assert drift > tolerance
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


def test_golden_images_spread_over_the_scores_with_the_highest() -> None:
    assert choose_golden(np.array([5.0, 1.0, 4.0, 2.0, 3.0]), count=3).tolist() == [0, 1, 4]
    assert choose_golden(np.array([2.0, 1.0]), count=4).tolist() == [0, 1]


def test_tolerances_hand_computed() -> None:
    fp32 = np.array([1.1, 2.5])
    assert tolerance_for("fp32", fp32, fp32) == FP32_TOLERANCE
    assert tolerance_for("int8", np.array([1.0, 2.0]), fp32) == pytest.approx(0.05 + 2 * 0.5)
    assert tolerance_for("fp16", np.array([1.0, 2.0]), fp32) == pytest.approx(0.1 + 2 * 0.5)


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
    result = SelfTestResult("int8", "onnxruntime", 4, float("nan"), 0.0, 1.0, 0.1)
    assert not result.passed


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
def test_the_bundle_passes_its_self_test_on_an_emulated_cpu_without_vnni(graph_bundle) -> None:
    """`-cpu Haswell` reports AVX2 and FMA but no AVX-512 and no VNNI: onnxruntime takes the vpmaddubsw
    kernels whose int16 pair sums saturate. The bundle exported here must give the same answers there."""
    code = "import sys; from npgmf_edge.cli import main; sys.argv[0] = 'npgmf-edge'; main()"
    done = subprocess.run(
        [QEMU, "-cpu", "Haswell", sys.executable, "-c", code, "verify", str(graph_bundle), "--json"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    report = json.loads(done.stdout)
    features = set(report["machine"]["cpu_features"])
    assert "avx2" in features and not features & {"avx512_vnni", "avx_vnni", "avx512f"}
    assert done.returncode == 0 and report["passed"], done.stdout
    assert {row["precision"] for row in report["rows"]} == {"fp32", "int8"}
