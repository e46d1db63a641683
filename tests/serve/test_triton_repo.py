"""`triton-repo`: the written config.pbtxt parses as Triton's ModelConfig (tritonclient's copy of
model_config.proto) and declares exactly the ONNX graph's inputs and outputs. PyTriton's bundled
tritonserver has only the python backend, so the repository cannot be loaded here (docs/SERVE.md)."""

import json

import numpy as np
import onnx
import pytest
from tritonclient.grpc import model_config_pb2  # the serve extra (make setup installs it)

from npgmf_edge.errors import BundleError, ConfigError, OutputError
from npgmf_edge.runtime import read_manifest
from npgmf_edge.serve.triton_repo import RepoOptions, check_config_text, write_triton_repo

ONNX_TYPES = {onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32}


def _io(graph: onnx.GraphProto, values) -> dict[str, tuple[int, list[int | str]]]:
    """name -> (element type, dims with the batch axis as its symbolic name)."""
    return {
        v.name: (
            v.type.tensor_type.elem_type,
            [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim],
        )
        for v in values
    }


def _declared(tensors) -> dict[str, tuple[int, list[int]]]:
    """name -> (Triton data type, the model's own shape after the batch axis: `reshape` where given)."""
    return {
        t.name: (t.data_type, list(t.reshape.shape) if t.HasField("reshape") else list(t.dims))
        for t in tensors
    }


def test_the_repository_declares_the_graphs_inputs_outputs_and_threshold(graph_bundle, tmp_path, cli) -> None:
    code, out, err = cli(
        "triton-repo", graph_bundle, "--out", tmp_path / "repo", "--precision", "int8", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["models"] == {"npgmf": "onnxruntime_onnx"}
    manifest = read_manifest(graph_bundle)
    folder = tmp_path / "repo" / "npgmf"
    config = check_config_text((folder / "config.pbtxt").read_text())
    graph = onnx.load(str(folder / "1" / "model.onnx")).graph

    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == manifest.max_batch
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    for declared, values in ((config.input, graph.input), (config.output, graph.output)):
        onnx_io = _io(graph, values)
        assert set(_declared(declared)) == set(onnx_io)
        for name, (data_type, dims) in _declared(declared).items():
            elem_type, onnx_dims = onnx_io[name]
            assert data_type == ONNX_TYPES[elem_type]
            assert isinstance(onnx_dims[0], str), f"{name}: the batch axis is dynamic in the graph"
            assert dims == onnx_dims[1:], name
    assert list(config.input[0].dims) == [3, manifest.image_size, manifest.image_size]
    assert config.input[0].format == model_config_pb2.ModelInput.FORMAT_NCHW
    threshold = float(config.parameters["threshold"].string_value)
    assert threshold == manifest.calibration["int8"].threshold
    assert config.parameters["precision"].string_value == "int8"
    assert not (tmp_path / "repo" / "npgmf_trt").exists()  # no engine in this bundle: no tensorrt_plan model


def test_a_faiss_bundle_is_refused_in_one_line(faiss_bundle, tmp_path, cli) -> None:
    code, _, err = cli("triton-repo", faiss_bundle, "--out", tmp_path / "repo")
    assert code == 1 and "--knn faiss bundle" in err and "re-export with --knn graph" in err
    assert err.count("\n") == 1 and not (tmp_path / "repo").exists()


def test_a_failed_write_keeps_the_previous_repository(graph_bundle, tmp_path, monkeypatch) -> None:
    out = tmp_path / "repo"
    write_triton_repo(graph_bundle, out, RepoOptions())
    before = (out / "npgmf" / "config.pbtxt").read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("npgmf_edge.serve.triton_repo.check_config_text", broken)
    with pytest.raises(OSError, match="disk full"):
        write_triton_repo(graph_bundle, out, RepoOptions(max_queue_delay_us=5))
    assert (out / "npgmf" / "config.pbtxt").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no staging folder left behind


def test_a_bad_model_name_or_output_folder_is_named(graph_bundle, tmp_path) -> None:
    with pytest.raises(ConfigError, match="model name 'a/b'"):
        write_triton_repo(graph_bundle, tmp_path / "repo", RepoOptions(model_name="a/b"))
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is not a directory"):
        write_triton_repo(graph_bundle, tmp_path / "file", RepoOptions())
    with pytest.raises(BundleError, match="no fp16 graph"):
        write_triton_repo(graph_bundle, tmp_path / "repo", RepoOptions(precision="fp16"))


def test_a_config_outside_the_schema_is_refused() -> None:
    with pytest.raises(ConfigError, match="does not match Triton's model configuration schema"):
        check_config_text('name: "x"\nmax_batch: 8\n')


def test_the_repository_model_run_as_triton_would_gives_the_inspectors_verdicts(
    graph_bundle, tiny_run, tmp_path
):
    """What Triton's onnxruntime backend would do with a full batch, done with onnxruntime here: the
    client contract of docs/SERVE.md (resize with to_model_input, compare image_score with the threshold
    parameter) gives the Inspector's scores and verdicts."""
    import onnxruntime

    from npgmf_edge.data import read_image
    from npgmf_edge.preprocess import to_model_input
    from npgmf_edge.runtime import Inspector

    write_triton_repo(graph_bundle, tmp_path / "repo", RepoOptions())
    folder = tmp_path / "repo" / "npgmf"
    config = check_config_text((folder / "config.pbtxt").read_text())
    paths = [s.image_path for s in tiny_run[1].test[::5]][: config.max_batch_size]
    size = config.input[0].dims[-1]
    pixels = np.stack([to_model_input(read_image(p), size) for p in paths])
    session = onnxruntime.InferenceSession(
        str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    outputs = dict(
        zip(
            [o.name for o in config.output],
            session.run([o.name for o in config.output], {config.input[0].name: pixels}),
            strict=True,
        )
    )
    threshold = float(config.parameters["threshold"].string_value)
    with Inspector.open(graph_bundle) as inspector:
        expected = inspector.inspect(paths)
    assert outputs["image_score"].shape == (len(paths),)
    assert outputs["image_score"].tolist() == pytest.approx([e.score for e in expected], rel=1e-5)
    verdicts = ["anomalous" if score > threshold else "good" for score in outputs["image_score"]]
    assert verdicts == [e.verdict for e in expected]
