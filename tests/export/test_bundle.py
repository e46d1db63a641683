"""The bundle against the torch run it came from, its graphs' TensorRT readiness, and its file contract."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from npgmf_edge.errors import BundleError
from npgmf_edge.export import bundle as bundle_module
from npgmf_edge.export.bundle import ExportOptions, export_bundle
from npgmf_edge.export.tensorrt_ops import TENSORRT_OPS
from npgmf_edge.export.verify import VerifyReport, verify_bundle
from npgmf_edge.rundir import write_run_manifest
from npgmf_edge.runtime import manifest as manifest_module
from npgmf_edge.runtime.manifest import MANIFEST_FILE, SCHEMA_VERSION, read_manifest

CLIP_WIDTH = 512  # ViT-B-32 text embedding width
TEXT_DIM = 32  # the tiny preset's adapted text prior: FC(text) is folded into a (32,) constant
MAX_GRAPH_BYTES = 100 * 2**20  # tiny fp32 measures 55 MB; CLIP ViT-B-32's text tower alone is ~250 MB


@pytest.fixture(scope="module", params=["faiss", "graph", "int8_search"])
def verified(request, tiny_run) -> VerifyReport:
    bundle = request.getfixturevalue(f"{request.param}_bundle")
    run, dataset = tiny_run
    return verify_bundle(bundle, run, dataset)


def test_fp32_bundle_reproduces_the_torch_run_on_the_make_data_test_set(verified: VerifyReport) -> None:
    (fp32,) = [row for row in verified.rows if row["precision"] == "fp32"]
    assert verified.images == 60
    for name in ("logical", "structural"):
        assert fp32[f"{name}_map_max_abs_diff"] <= 1e-4, name
    # The fused map is in units of normal-pixel standard deviations: the 1e-4 carried through Eq. 11.
    assert fp32["fused_map_max_abs_diff"] <= fp32["fused_map_tolerance"]
    assert 1e-4 < fp32["fused_map_tolerance"] < 1e-1
    assert fp32["score_max_rel_diff"] <= 1e-5
    assert fp32["verdict_agreement"] == 1.0
    assert verified.fp32_parity


def test_fp16_and_int8_cost_little_against_torch(verified: VerifyReport) -> None:
    """Measured on this run (pretrained Lite0, docs/DEPLOY.md): fp16 score rel diff 1.3e-2, int8 6.2e-2
    (7-bit weights, the encoder float; 1.4e-1 before depthwise and stem convolutions stayed float);
    verdicts 98.3% fp16, 100% int8; AUROC 0.890 for torch, 0.888 fp16, 0.885 int8; every precision
    passes its self-test. INT8's integer products are exact on every CPU (tests/export/test_int8_safety.py),
    so these bounds do not depend on VNNI: across ISAs only float rounding differs, by ~1e-5 here."""
    for row in verified.rows:
        if row["precision"] == "fp32":
            continue
        bound = {"fp16": 3e-2, "int8": 0.15}[row["precision"]]
        assert row["score_max_rel_diff"] <= bound, row
        assert row["verdict_agreement"] >= 0.95, row
        assert abs(row["image_auroc"] - verified.torch_image_auroc) <= 0.03, row
        assert row["self_test"]["passed"], row


def _undetermined_shapes(model: onnx.ModelProto, batch: int = 2) -> list[str]:
    """Tensors whose shape ONNX shape inference cannot derive once the batch is fixed: a spatial size
    computed at run time, which a TensorRT profile over the batch alone would not cover."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.value_info[:]  # the exporter's own annotations carry the symbolic batch
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].dim_value = batch
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    return [
        v.name
        for v in [*inferred.graph.value_info, *inferred.graph.output]
        if not v.type.tensor_type.HasField("shape")
        or any(not d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)
    ]


def _graphs(*bundles: Path) -> list[Path]:
    return [p for b in bundles for p in sorted(b.glob("model.*.onnx"))]


def test_every_graph_is_checked_static_and_made_of_tensorrt_ops(
    faiss_bundle: Path, graph_bundle: Path, tiny_run
) -> None:
    from npgmf_edge.fileio import load_tensors

    embedding = load_tensors(tiny_run[0] / "logical" / "model.safetensors")[0]["text_prior.embedding"].numpy()
    assert embedding.shape == (CLIP_WIDTH,)
    graphs = _graphs(faiss_bundle, graph_bundle)
    assert len(graphs) == 5
    for path in graphs:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        ops = {node.op_type for node in model.graph.node}
        assert ops <= TENSORRT_OPS, f"{path.name}: {sorted(ops - TENSORRT_OPS)}"
        assert not _undetermined_shapes(model), f"{path.name}: shapes not fixed by the batch size"
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
        assert path.stat().st_size < MAX_GRAPH_BYTES
        for tensor in model.graph.initializer:  # neither the CLIP embedding nor the FC adapting it
            array = onnx.numpy_helper.to_array(tensor)
            assert tuple(array.shape) not in {(TEXT_DIM, CLIP_WIDTH), (CLIP_WIDTH, TEXT_DIM)}, path.name
            if array.shape == (CLIP_WIDTH,):
                assert not np.allclose(array.astype(np.float32), embedding, atol=1e-3), path.name


def test_manifest_holds_the_contract(faiss_bundle: Path, graph_bundle: Path) -> None:
    data = json.loads((faiss_bundle / MANIFEST_FILE).read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["preset"] == "tiny" and data["category"] == "breakfast_tray"
    assert data["input"]["size"] == 128 and data["input"]["max_batch"] == 8
    assert set(data["graphs"]) == set(data["calibration"]) == {"fp32", "fp16", "int8"}
    assert data["graphs"]["fp32"]["outputs"] == {
        "logical_map": [1, 128, 128],
        "patch_features": [128, 16, 16],
    }
    assert data["coreset"]["dim"] == 128 and data["coreset"]["files"] == ["coreset.faiss", "coreset.npy"]
    assert data["coreset"]["aggregation"] == "reference"  # the tiny preset's structural.aggregation
    assert sorted(data["files"]) == sorted(p.name for p in faiss_bundle.iterdir() if p.name != MANIFEST_FILE)
    assert {"fp16", "int8"} == set(data["quality"])
    # Each precision's calibration comes from its own maps: fp16 and int8 statistics differ from fp32's.
    assert data["calibration"]["int8"]["logical"] != data["calibration"]["fp32"]["logical"]
    graph = json.loads((graph_bundle / MANIFEST_FILE).read_text())
    assert set(graph["graphs"]["fp32"]["outputs"]) == {
        "fused_map",
        "image_score",
        "logical_map",
        "structural_map",
    }
    assert not (graph_bundle / "coreset.faiss").exists()


@pytest.fixture
def bundle_copy(faiss_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(faiss_bundle, tmp_path / "bundle"))


@pytest.mark.parametrize("name", ["model.fp32.onnx", "model.int8.onnx", "coreset.faiss", "coreset.npy"])
def test_a_flipped_byte_or_a_missing_file_is_named_at_load(bundle_copy: Path, name: str) -> None:
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{path} does not match the SHA-256 .*re-export"):
        read_manifest(bundle_copy)
    path.unlink()
    with pytest.raises(BundleError, match=rf"{path} is missing from the bundle; re-export"):
        read_manifest(bundle_copy)


def _edit_manifest(bundle: Path, edit) -> None:
    """Change the manifest as another toolkit version would write it (its content hash made valid again)."""
    path = bundle / MANIFEST_FILE
    data = json.loads(path.read_text())
    edit(data)
    data[manifest_module.SELF_HASH_KEY] = manifest_module._content_sha256(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("marker", [b'"threshold": ', b'"dim": ', b"\n  "])
def test_a_flipped_byte_in_the_manifest_itself_is_caught(bundle_copy: Path, marker: bytes) -> None:
    path = bundle_copy / MANIFEST_FILE
    data = bytearray(path.read_bytes())
    data[data.index(marker) + len(marker)] ^= 0x01  # a digit becomes another digit, a quote becomes "#"
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{path}.*re-export"):
        read_manifest(bundle_copy)


def test_a_newer_schema_is_refused_with_what_to_do(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(
        BundleError, match=rf"schema_version {SCHEMA_VERSION + 1}, newer .* upgrade npgmf-edge"
    ):
        read_manifest(bundle_copy)


def test_a_coreset_of_another_dimension_is_refused(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda d: d["coreset"].update(dim=64))
    with pytest.raises(BundleError, match="yields 128-dim patch features but the coreset has dimension 64"):
        read_manifest(bundle_copy)


def test_a_bundle_from_before_the_aggregation_option_reads_as_the_reference(bundle_copy: Path) -> None:
    assert read_manifest(bundle_copy).structural_aggregation == "reference"
    _edit_manifest(bundle_copy, lambda d: d["coreset"].update(aggregation="local_mean"))
    assert read_manifest(bundle_copy).structural_aggregation == "local_mean"
    _edit_manifest(bundle_copy, lambda d: d["coreset"].pop("aggregation"))
    assert read_manifest(bundle_copy).structural_aggregation == "reference"


def test_a_truncated_manifest_is_a_bundle_error(bundle_copy: Path) -> None:
    path = bundle_copy / MANIFEST_FILE
    path.write_text(path.read_text()[:100])
    with pytest.raises(BundleError, match=rf"cannot read {path}"):
        read_manifest(bundle_copy)


def test_export_killed_midway_leaves_the_previous_bundle_intact(
    tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "bundle"
    export_bundle(tiny_run[0], out, ExportOptions(knn="faiss", tensorrt=False))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def killed(*args, **kwargs):  # the graph is already in the staging folder when the coreset is saved
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle_module.FaissNN, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(
            tiny_run[0], out, ExportOptions(precisions=("fp32", "fp16"), knn="faiss", tensorrt=False)
        )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging folder left behind
    read_manifest(out)


GOOD_INT8 = {"images": 20, "verdict_agreement": 1.0, "score_rank_correlation": 0.99, "score_drift": 0.01}


@pytest.mark.parametrize(
    ("change", "numbers"),
    [
        ({"verdict_agreement": 0.9}, r"verdicts disagree on 10.0% \(limit 2.0%\)"),
        ({"score_rank_correlation": 0.5}, r"score rank correlation 0.500 \(at least 0.95\)"),
        ({"score_rank_correlation": float("nan")}, r"score rank correlation nan \(at least 0.95\)"),
        ({"score_drift": 0.25}, r"score drift 0.250 \(at most 0.1\)"),
    ],
)
def test_int8_that_strays_from_fp32_is_refused_with_its_numbers(
    change, numbers, tiny_run, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(bundle_module, "_quality", lambda *maps: {**GOOD_INT8, **change})
    with pytest.raises(bundle_module.Int8RefusedError, match=f"INT8 strays from FP32 on the 20 .*{numbers}"):
        export_bundle(tiny_run[0], tmp_path / "b", ExportOptions(precisions=("fp32", "int8"), tensorrt=False))
    assert not (tmp_path / "b").exists()


def test_an_int8_graph_with_saturated_products_is_refused_at_export(
    tiny_run, tmp_path: Path, monkeypatch
) -> None:
    """The real guard on a real graph: INT8 weights clipped to |w| <= 16, as int16 saturation clips the
    largest products, through the unpatched quality check; export names the numbers that refused it."""
    from onnx import numpy_helper

    from npgmf_edge.export import precision

    quantize = precision.quantize_int8

    def clipped(src, dst, batches, **kwargs):
        model = onnx.load(str(quantize(src, dst, batches, **kwargs)))
        for tensor in model.graph.initializer:
            weights = numpy_helper.to_array(tensor)
            if weights.dtype == np.int8 and weights.ndim >= 2:
                tensor.CopyFrom(
                    numpy_helper.from_array(np.clip(weights, -16, 16).astype(np.int8), tensor.name)
                )
        onnx.save(model, str(dst))
        return dst

    monkeypatch.setattr(precision, "quantize_int8", clipped)
    options = ExportOptions(precisions=("fp32", "int8"), knn="faiss", tensorrt=False)
    with pytest.raises(bundle_module.Int8RefusedError, match="score rank correlation") as refused:
        export_bundle(tiny_run[0], tmp_path / "b", options)
    correlation = float(str(refused.value).split("score rank correlation ")[1].split()[0])
    drift = float(str(refused.value).split("score drift ")[1].split()[0])
    assert correlation < 0.95 or drift > 0.1
    assert not (tmp_path / "b").exists()


def test_an_uncalibrated_run_is_not_exported(tiny_run, tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run[0], tmp_path / "run"))
    (run / "calibration.json").unlink()
    write_run_manifest(run)  # as a run trained without --branch all records it
    with pytest.raises(BundleError, match="is not a complete, calibrated run"):
        export_bundle(run, tmp_path / "b", ExportOptions(tensorrt=False))


def test_quality_report_matches_a_direct_computation() -> None:
    from npgmf_edge.calibration import Calibration
    from npgmf_edge.postprocess import BranchStats

    cal = Calibration(BranchStats(0.0, 1.0), BranchStats(0.0, 1.0), 1.0, 1.0, 0.0, 1.5, 0.01, 4)
    rng = np.random.default_rng(0)
    ref = {"logical": rng.random((4, 8, 8)).astype(np.float32), "structural": np.zeros((4, 8, 8), np.float32)}
    cand = {"logical": ref["logical"].copy(), "structural": ref["structural"].copy()}
    cand["logical"][2] += 0.25  # one image shifted: its score rises by 0.25
    report = bundle_module._quality(ref, cand, cal, cal)
    assert report["logical_map_max_abs_diff"] == pytest.approx(0.25)
    assert report["logical_map_mean_abs_diff"] == pytest.approx(0.25 / 4)
    ref_scores = ref["logical"].reshape(4, -1).max(1)
    expected_agreement = np.mean((ref_scores > 1.5) == (ref_scores + np.array([0, 0, 0.25, 0]) > 1.5))
    assert report["verdict_agreement"] == expected_agreement
    shifted = ref_scores + np.array([0, 0, 0.25, 0])
    assert report["score_drift"] == pytest.approx(0.25 / 4 / ref_scores.mean())
    assert report["score_drift"] == pytest.approx(
        np.abs(shifted - ref_scores).mean() / np.abs(ref_scores).mean()
    )


@pytest.mark.parametrize(("scale", "parity"), [(50.0, True), (1.0, False)])
def test_fp32_map_tolerance_scales_with_the_map(scale: float, parity: bool) -> None:
    """An edge-preset structural map holds distances of ~30-50, where float32 rounding alone differs by
    ~1e-4 (measured 1.13e-4): within 1e-5 of a map reaching 50 (5e-4), outside 1e-4 for a map of 1."""
    from npgmf_edge.export import verify

    rng = np.random.default_rng(0)
    structural = (rng.random((2, 8, 8)) * scale).astype(np.float32)
    logical = rng.random((2, 8, 8)).astype(np.float32)
    reference = {"logical": logical, "structural": structural, "fused": logical.copy()}
    got = {name: value.copy() for name, value in reference.items()}
    got["structural"][0, 0, 0] += 1.13e-4
    for maps in (reference, got):
        maps["score"] = maps["fused"].reshape(2, -1).max(axis=1)
    row = verify._compare(reference, got, 0.5, 0.5)
    row["fused_map_tolerance"] = 1e-4
    assert row["structural_map_max_abs_diff"] == pytest.approx(1.13e-4, rel=0.05)
    assert row["structural_map_tolerance"] == pytest.approx(max(1e-4, 1e-5 * structural.max()))
    assert verify._fp32_ok(row) is parity
