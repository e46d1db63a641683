"""libnpgmf (native/) against the Python runtime on the same bundles (issue 21).

- parity: the native runtime and `Inspector.inspect` on the same images, fp32 and int8, knn graph and
  faiss: equal verdicts, scores and maps within the bundle's fp32 self-test tolerance;
- the self-test: the clipped-INT8 bundle refused with the Python runtime's reason, its fallback in FP32;
- bad inputs (a flipped bit in any file, a missing file, a newer schema, a path outside the bundle, empty,
  truncated and oversized images, NULL pointers, wrong struct sizes): each a status and one line, run
  against the ASan + UBSan build;
- 8 threads on one handle give the sequential results (also under ThreadSanitizer);
- npgmf-inspect prints predict's JSON fields; the install gives a find_package(npgmf) that builds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from native_build import ROOT, run_under_asan
from native_build import build as native_build_of
from npgmf_ctypes import NativeError

from npgmf_edge.errors import BundleError
from npgmf_edge.runtime import Inspector, selftest
from npgmf_edge.runtime.manifest import (
    MANIFEST_FILE,
    SELF_HASH_KEY,
    _content_sha256,
    graph_file,
)
from npgmf_edge.runtime.selftest import SelfTestError
from npgmf_edge.workflows import CSV_FIELDS

PARITY_IMAGES = 6
BOMB_FORMATS = ("gif", "png", "jpeg", "bmp", "tiff", "webp", "pnm", "pam", "hdr", "sunras")  # image_bomb's
UNREAD_FORMATS = {"tiff", "webp", "pam", "hdr", "sunras"}  # refused by name: native reads no such header
UNREAD_EXTENSIONS = (".tiff", ".webp", ".pam", ".hdr", ".pfm", ".ras", ".jp2", ".avif")
# The fp32 self-test's tolerance: FP32_TOLERANCE (schema 2), the fp32 margin of the schema-3 self-test.
FP32_TOLERANCE = getattr(selftest, "FP32_TOLERANCE", None) or selftest.MARGIN["fp32"]


def _images(tiny_run) -> list[Path]:
    """Good and defective test images of the tiny run's data set."""
    samples = tiny_run[1].test
    step = max(1, len(samples) // PARITY_IMAGES)
    return [s.image_path for s in samples[::step][:PARITY_IMAGES]]


def _python_selftest_tests():
    """tests/runtime/test_selftest.py as a module: its clipped-INT8 bundle (`drifting_bundle`) and its
    manifest rewrite (`rehash`) are what these tests use too, so both runtimes face the same bundle."""
    spec = importlib.util.spec_from_file_location(
        "python_selftest_tests", ROOT / "tests/runtime/test_selftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SELFTEST_TESTS = _python_selftest_tests()
drifting_bundle = _SELFTEST_TESTS.drifting_bundle  # a fixture: the graph bundle with INT8 weights clipped
_rewrite = _SELFTEST_TESTS.rehash  # (bundle, change): the manifest rewritten with its hashes


@pytest.mark.parametrize("knn", ["graph", "faiss"])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_native_gives_the_python_runtimes_answers(
    native_lib, tiny_run, graph_bundle, faiss_bundle, knn, precision
):
    bundle = graph_bundle if knn == "graph" else faiss_bundle
    images = _images(tiny_run)
    with Inspector.open(bundle, precision=precision, threads=1) as python:
        expected = python.inspect(images)
    with native_lib.open(bundle, precision=precision, threads=1) as native:
        info = native.describe()
        assert (info.precision, info.knn, info.self_test_ran) == (precision.encode(), knn.encode(), 1)
        assert info.self_test_score_error <= info.self_test_budget
        for path, want in zip(images, expected, strict=True):
            shape = want.anomaly_map.shape
            got = native.inspect_file(path, map_shape=shape)
            assert got.verdict == want.verdict, path
            assert abs(got.score - want.score) <= FP32_TOLERANCE, (path, got.score, want.score)
            assert got.threshold == pytest.approx(want.threshold, abs=1e-12)
            assert np.abs(got.anomaly_map - want.anomaly_map).max() <= FP32_TOLERANCE, path
            # the same image as an array with padded rows, and as encoded bytes: the same answer
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            padded = np.zeros((rgb.shape[0], rgb.shape[1] + 3, 3), np.uint8)
            padded[:, : rgb.shape[1]] = rgb
            from_array = native.inspect_rgb(padded[:, : rgb.shape[1]])
            from_bytes = native.inspect_encoded(path.read_bytes(), map_shape=shape)
            assert from_array.score == from_bytes.score == got.score
            assert np.array_equal(from_array.anomaly_map, got.anomaly_map)


def test_the_clipped_int8_bundle_is_refused_with_the_python_reason(native_lib, drifting_bundle, tiny_run):
    with pytest.raises(SelfTestError) as python:
        Inspector.open(drifting_bundle, precision="int8")
    with pytest.raises(NativeError) as native:
        native_lib.open(drifting_bundle, precision="int8")
    assert native.value.status == "NPGMF_SELFTEST_FAILED"
    message, reason = str(native.value), str(python.value)
    assert "\n" not in message
    head = f"{drifting_bundle}: the int8 graph fails its self-test on this machine: its scores are "
    assert message.startswith(head) and "onnxruntime" in message
    # The same export machine and advice: "exported on x86_64 with ...; open it with --precision fp32, or
    # pass --fallback fp32 to answer in fp32 when int8 fails here".
    assert message.split("; exported on ")[1] == reason.split("; exported on ")[1]
    if "its scores are" in reason:  # the Python runtime judges as the native one (schema 3): the same words
        mask = re.compile(r"[-\d.e+]+(?=[ ,)])|nan|with .* on .*(?=; exported on)")
        assert mask.sub("#", message) == mask.sub("#", reason)
    error = float(message.split("its scores are ")[1].split()[0])
    assert error > float(message.split("(budget ")[1].split(")")[0])

    image = _images(tiny_run)[0]
    with native_lib.open(drifting_bundle, precision="int8", fallback="fp32") as answering:
        info = answering.describe()
        assert (info.precision, info.requested_precision) == (b"fp32", b"int8")
        assert info.fallback_reason.decode() == message
        score = answering.inspect_file(image).score
    with native_lib.open(drifting_bundle, precision="fp32") as fp32:
        assert fp32.inspect_file(image).score == score


def test_an_unavailable_device_is_refused_with_the_providers_there(native_lib, graph_bundle):
    with pytest.raises(NativeError) as refused:
        native_lib.open(graph_bundle, device="cuda")
    assert refused.value.status == "NPGMF_UNSUPPORTED"
    assert "CUDAExecutionProvider" in str(refused.value) and "CPUExecutionProvider" in str(refused.value)


@pytest.mark.gpu
def test_the_cuda_provider_gives_the_cpu_answers(native_lib, graph_bundle, tiny_run):
    """Needs an ONNX Runtime with the CUDA provider linked in place of the wheel's CPU one."""
    image = _images(tiny_run)[0]
    with native_lib.open(graph_bundle, device="cuda") as gpu, native_lib.open(graph_bundle) as cpu:
        assert abs(gpu.inspect_file(image).score - cpu.inspect_file(image).score) <= FP32_TOLERANCE


def test_older_onnxruntime_headers_drive_the_newer_library(native_lib):
    """The C API is versioned: the headers' ORT_API_VERSION is asked of whatever library is loaded."""
    cache = (ROOT / "native/build/CMakeCache.txt").read_text()
    include = re.search(r"NPGMF_ORT_INCLUDE_DIR:PATH=(.*)", cache).group(1) or re.search(
        r"NPGMF_ORT_HEADERS:PATH=(.*)", cache
    ).group(1)
    header = (Path(include) / "onnxruntime_c_api.h").read_text()
    api_version = int(re.search(r"#define ORT_API_VERSION (\d+)", header).group(1))
    library = native_lib.lib.npgmf_version_string().decode()
    loaded_minor = int(re.search(r"onnxruntime 1\.(\d+)", library).group(1))
    assert loaded_minor >= api_version  # equal on Debian 13 with its own library; newer with the wheel


@pytest.mark.parametrize("variant", ["release", "address"])
def test_the_c_abi_checks_pass(variant):
    """native/tests/abi_test.c: NULLs and wrong sizes are statuses, and an options struct of the first ABI
    (before `trust`) is never written past (guard bytes, also under ASan)."""
    folder = native_build_of(variant)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1"}
    done = subprocess.run([folder / "npgmf_abi_test"], capture_output=True, text=True, env=env)
    assert (done.returncode, done.stdout) == (0, "abi_test: ok\n"), done.stderr


def test_a_manifest_with_unicode_and_extreme_numbers_passes_its_content_hash(
    native_lib, graph_bundle, tmp_path
):
    """The native reader rewrites json.dumps(sort_keys=True) byte for byte (repr of floats, \\u escapes)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(graph_bundle, bundle)
    extras = {'é☃😀"\\\n': [1e16, 1e15, 1e-05, 0.0001, -0.0, 5e-324, 123456789.123, 1.7976931348623157e308]}
    _rewrite(bundle, lambda raw: raw.update(notes=extras, category="tray é😀"))
    native_lib.open(bundle, self_test=False).close()
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    raw["notes"]['é☃😀"\\\n'][0] = 1e17  # a changed number: the hash no longer matches
    (bundle / MANIFEST_FILE).write_text(json.dumps(raw))
    assert raw[SELF_HASH_KEY] != _content_sha256(raw)
    with pytest.raises(NativeError, match="was changed after export"):
        native_lib.open(bundle, self_test=False)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_the_margins_of_their_one_home_bound_the_budgets_in_both_runtimes(
    native_lib, faiss_bundle, tmp_path, precision
):
    """runtime/selftest_margins.json is read by selftest.py and compiled into libnpgmf (a header CMake
    generates from it): a budget of the export's error plus that margin opens in both runtimes, one a
    hair above is refused by both with the same sentence."""
    margins = json.loads((ROOT / "npgmf_edge/runtime/selftest_margins.json").read_text())
    assert (margins["margin"], margins["flip_allowance"]) == (selftest.MARGIN, selftest.FLIP_ALLOWANCE)
    entry = json.loads((faiss_bundle / MANIFEST_FILE).read_text())["selftest"]
    measured = selftest.score_error(entry["precisions"][precision]["scores"], entry["reference"])
    limit = measured + margins["margin"][precision]
    for factor, opens in ((1.0, True), (1 + 1e-6, False)):
        bundle = tmp_path / f"budget-{factor}"
        shutil.copytree(faiss_bundle, bundle)
        budget = {"budget": limit * factor}
        _rewrite(bundle, lambda raw, b=budget: raw["selftest"]["precisions"][precision].update(b))
        try:
            Inspector.open(bundle, precision=precision, self_test=False).close()
            python = ""
        except BundleError as exc:
            python = str(exc)
        try:
            native_lib.open(bundle, precision=precision, self_test=False).close()
            native = ""
        except NativeError as exc:
            native = str(exc)
        assert (python == "") == (native == "") == opens, (python, native)
        assert native == python


# --- bad inputs, under AddressSanitizer + UBSan ------------------------------------------------------------


def _broken_bundles(graph_bundle: Path, faiss_bundle: Path, root: Path) -> list[tuple[str, Path, str]]:
    """(name, bundle, the Python runtime's one-line reason) for each broken bundle."""
    cases = []

    def copy(name: str, source: Path = graph_bundle) -> Path:
        target = root / name
        shutil.copytree(source, target)
        return target

    for source in (graph_bundle, faiss_bundle):
        for file in sorted(p.name for p in source.iterdir()):
            bundle = copy(f"flip-{source.name}-{file}", source)
            data = bytearray((bundle / file).read_bytes())
            data[len(data) // 2] ^= 0x10
            (bundle / file).write_bytes(bytes(data))
            cases.append((f"flipped bit in {source.name}/{file}", bundle))
    bundle = copy("missing")
    (bundle / graph_file("int8")).unlink()
    cases.append(("missing file", bundle))
    bundle = copy("newer")
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    raw["schema_version"] = 99
    raw[SELF_HASH_KEY] = _content_sha256(raw)
    (bundle / MANIFEST_FILE).write_text(json.dumps(raw))
    cases.append(("newer schema", bundle))
    bundle = copy("dotdot")
    _rewrite(bundle, lambda raw: raw["graphs"]["fp32"].update(file="../model.fp32.onnx"))
    cases.append(("a path with ..", bundle))
    bundle = copy("symlink")
    outside = root / "outside.onnx"
    shutil.copy(bundle / graph_file("fp32"), outside)
    (bundle / graph_file("fp32")).unlink()
    (bundle / graph_file("fp32")).symlink_to(outside)
    cases.append(("a symlink out of the bundle", bundle))
    out = []
    for name, bundle in cases:
        try:
            Inspector.open(bundle, self_test=False)
            reason = ""
        except BundleError as exc:
            reason = str(exc)
        out.append((name, bundle, reason))
    return out


def _bad_images(root: Path, image_bomb) -> list[Path]:
    good = cv2.imencode(".png", np.full((20, 30, 3), 120, np.uint8))[1].tobytes()
    images = {
        "empty.png": b"",
        "truncated.png": good[: len(good) // 2],
        "header-only.png": good[:30],
        "garbage.png": bytes(range(256)) * 4,
        "bomb.png": image_bomb("png", 100_000, 100_000),
        "bomb.jpg": image_bomb("jpeg", 60_000, 60_000),
        "bomb.gif": image_bomb("gif", 65_535, 65_535),
    }
    for name, data in images.items():
        (root / name).write_bytes(data)
    return [root / name for name in images]


def _format_images(root: Path, image_bomb) -> list[Path]:
    """Bombs of every format `image_bomb` writes, and small valid images of the formats native reads no
    header of (refused by name)."""
    images = {}
    for fmt in BOMB_FORMATS:  # 225 MP claimed, below OpenCV's own wall: only the header check refuses it
        side = 15000 if fmt != "webp" else 16000
        images[f"bomb15k.{fmt}"] = image_bomb(fmt, side, side)
    for extension in UNREAD_EXTENSIONS:
        ok, encoded = cv2.imencode(extension, np.full((41, 75, 3), 120, np.uint8))  # JPEG 2000: >= 32 px
        if ok:
            images[f"small{extension}"] = encoded.tobytes()
    for name, data in images.items():
        (root / name).write_bytes(data)
    return [root / name for name in images]


def test_bad_inputs_are_clean_statuses_under_asan_and_ubsan(
    asan_build, graph_bundle, faiss_bundle, tmp_path, craft_bomb
):
    broken = _broken_bundles(graph_bundle, faiss_bundle, tmp_path)
    images = _bad_images(tmp_path, craft_bomb)
    cases = [{"call": "open", "name": name, "bundle": str(bundle)} for name, bundle, _ in broken]
    intact_bundles = [graph_bundle, faiss_bundle]
    cases += [{"call": "open", "name": f"intact {b.name}", "bundle": str(b)} for b in intact_bundles]
    image_cases = [{"call": "file", "path": str(p)} for p in [*images, tmp_path / "absent.png"]]
    image_cases += [{"call": "bytes", "path": str(p)} for p in images]
    good = tmp_path / "good.jpg"
    cv2.imwrite(str(good), np.full((50, 70, 3), 90, np.uint8))
    image_cases += [{"call": "file", "path": str(good)}, {"call": "bytes", "path": str(good)}]
    # under a limit of 1000 pixels, as the Python runtime's bomb tests (below 16 x the limit a PNG, BMP, GIF
    # or PNM is decoded whole, by design: 225 MP is not a bomb under the default 16 MP)
    formats = _format_images(tmp_path, craft_bomb)
    format_cases = [{"call": call, "path": str(p)} for p in formats for call in ("file", "bytes")]
    cases.append({"call": "images", "bundle": str(faiss_bundle), "images": format_cases, "max_pixels": 1000})
    cases.append({"call": "images", "bundle": str(faiss_bundle), "images": image_cases})
    results = run_under_asan(asan_build, cases, tmp_path)
    nulls = results[0]["results"]
    assert [r["status"] for r in nulls] == ["NPGMF_INVALID_ARGUMENT"] * len(nulls)
    assert all(r["message"] and "\n" not in r["message"] for r in nulls)
    opened = results[1 : 1 + len(broken)]
    intact = results[1 + len(broken) : 3 + len(broken)]
    assert [r["status"] for r in intact] == ["NPGMF_OK"] * 2  # opened, self-test included
    for (name, _, python_reason), got in zip(broken, opened, strict=True):
        assert got["status"] == "NPGMF_BUNDLE_ERROR", (name, got)
        if "cannot read" in python_reason:  # a manifest no longer JSON: each parser words where it stopped
            assert got["message"].split(" (")[0] == python_reason.split(" (")[0], name
        else:  # the Python runtime's own sentence (the native reader already reads schema 3)
            newest = re.compile(r"than this toolkit reads \(\d+\)")
            assert newest.sub("#", got["message"]) == newest.sub("#", python_reason), name
    on_handle = results[-1]["results"]
    invalid = "NPGMF_INVALID_ARGUMENT"
    assert [r["status"] for r in on_handle[:7]] == [*[invalid] * 5, "NPGMF_BUFFER_TOO_SMALL", invalid]
    assert [r["status"] for r in on_handle[-2:]] == ["NPGMF_OK"] * 2  # the good image, inspected under ASan
    for case, got in zip(image_cases[:-2], on_handle[7:-2], strict=True):
        assert got["status"] == "NPGMF_IMAGE_ERROR", (case, got)
        assert "\n" not in got["message"] and got["message"], case
        if case["call"] == "file":
            assert case["path"] in got["message"]
    for case, got in zip(format_cases, results[-2]["results"][7:], strict=True):
        assert got["status"] == "NPGMF_IMAGE_ERROR" and "\n" not in got["message"], (case, got)
        name = Path(case["path"]).name
        if name.startswith("small.") or name.split(".")[-1] in UNREAD_FORMATS:
            assert "which the native runtime does not decode" in got["message"], (case, got)
        elif name.startswith("bomb15k."):  # the Python runtime's refusals (data/image_io.py)
            refusal = "too large to decode" if case["call"] == "file" else "above the limit"
            assert refusal in got["message"], (case, got)


# --- threads -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("knn", ["graph", "faiss"])
def test_eight_threads_on_one_handle_give_the_sequential_results(
    native_build, graph_bundle, faiss_bundle, knn
):
    bundle = graph_bundle if knn == "graph" else faiss_bundle
    done = subprocess.run(
        [native_build / "npgmf_threads_test", bundle, "int8", "8"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["mismatches"] == 0


@pytest.mark.parametrize("knn", ["graph", "faiss"])
def test_threads_under_thread_sanitizer(tsan_build, graph_bundle, faiss_bundle, knn):
    bundle = graph_bundle if knn == "graph" else faiss_bundle
    suppressions = ROOT / "native/tests/tsan.supp"  # ONNX Runtime's own (uninstrumented) thread pool only
    options = f"halt_on_error=1 report_signal_unsafe=0 suppressions={suppressions}"
    env = {**os.environ, "TSAN_OPTIONS": options}
    done = subprocess.run(
        [tsan_build / "npgmf_threads_test", bundle, "int8" if knn == "graph" else "fp32", "8"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING: ThreadSanitizer" not in done.stderr, done.stderr[-3000:]
    assert json.loads(done.stdout)["mismatches"] == 0


# --- the command line and the install ------------------------------------------------------------------


def test_npgmf_inspect_prints_predicts_fields_per_image(native_build, graph_bundle, tiny_run, tmp_path):
    images = _images(tiny_run)[:2]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    done = subprocess.run(
        [native_build / "npgmf-inspect", "--precision", "int8", graph_bundle, images[0], bad, images[1]],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["image"] for r in rows] == [str(images[0]), str(bad), str(images[1])]
    assert all(set(r) == set(CSV_FIELDS) for r in rows)  # predict's fields
    assert rows[1]["verdict"] == "error" and rows[1]["score"] is None and str(bad) in rows[1]["error"]
    with Inspector.open(graph_bundle, precision="int8") as python:
        expected = python.inspect([images[0], images[1]])
    for row, want in zip([rows[0], rows[2]], expected, strict=True):
        assert row["verdict"] == want.verdict and row["error"] == "" and row["precision"] == "int8"
        assert abs(row["score"] - want.score) <= FP32_TOLERANCE
        assert row["threshold"] == round(want.threshold, 6)


def test_cmake_install_gives_a_station_that_find_package_builds_against(
    native_build, graph_bundle, tiny_run, tmp_path
):
    prefix = tmp_path / "station"
    subprocess.run(["cmake", "--install", native_build, "--prefix", prefix], check=True, capture_output=True)
    parts = ("include/npgmf/npgmf.h", "include/npgmf/npgmf.hpp", "lib/libnpgmf.so", "lib/libonnxruntime.so.1",
             "lib/cmake/npgmf/npgmfConfig.cmake", "bin/npgmf-inspect")  # fmt: skip
    for part in parts:
        assert (prefix / part).exists(), part
    app = tmp_path / "app"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(app CXX)\nfind_package(npgmf 0.1 REQUIRED)\n"
        "add_executable(app main.cpp)\ntarget_link_libraries(app PRIVATE npgmf::npgmf)\n"
        "set_target_properties(app PROPERTIES BUILD_RPATH ${npgmf_DIR}/../..)\n"
    )
    (app / "main.cpp").write_text(
        "#include <npgmf/npgmf.hpp>\n#include <cstdio>\nint main(int, char **argv) {\n"
        "  npgmf::Inspector inspector(argv[1]);\n  auto r = inspector.inspect_file(argv[2]);\n"
        '  std::printf("%d %.6f\\n", npgmf::abi_version(), r.score);\n}\n'
    )
    subprocess.run(["cmake", "-S", app, "-B", app / "build", f"-DCMAKE_PREFIX_PATH={prefix}"], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(["cmake", "--build", app / "build"], check=True, capture_output=True)
    image = _images(tiny_run)[0]
    done = subprocess.run(
        [app / "build/app", graph_bundle, image], capture_output=True, text=True, check=True
    )
    abi, score = done.stdout.split()
    with Inspector.open(graph_bundle) as python:
        (want,) = python.inspect([image])
    assert abi == "1" and abs(float(score) - want.score) <= FP32_TOLERANCE
    installed = subprocess.run(
        [prefix / "bin/npgmf-inspect", graph_bundle, image], capture_output=True, text=True
    )
    assert installed.returncode == 0 and json.loads(installed.stdout)["verdict"] == want.verdict
