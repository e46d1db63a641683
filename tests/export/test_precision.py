"""Precision variants of an exported graph: the simplified FP32 graph against torch, the FP32 island rules,
FP16 and INT8 graphs in onnxruntime CPU against torch / the FP32 graph, and the errors a user can cause.

Error bounds are about three times what was measured here (onnxruntime 1.32 CPU, onnxconverter-common
1.16, seeds below). onnxruntime's x86 CPU kernels have no FP16 Conv / MatMul / Add / Mul / Div: it runs
them in FP32 between inserted casts, so these tests see FP16 storage rounding, not FP16 arithmetic.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from onnxconverter_common import float16
from torch import nn

from npgmf_edge.config import get_preset
from npgmf_edge.errors import BundleError, ConfigError
from npgmf_edge.export.onnx_graph import export_onnx
from npgmf_edge.export.precision import convert_fp16, fp32_island_nodes, quantize_int8, simplify
from npgmf_edge.models.logical import NpgmfLogicalNet, logical_anomaly_map
from npgmf_edge.models.logical.codebook import VectorQuantizer

SIZE = 64
CLIP_DIM = 512
INPUT = "pixels"
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@dataclass
class Graphs:
    """The tiny logical net with random weights, its graphs, a test batch and the torch map for it."""

    raw: Path
    fp32: Path
    fp16: Path
    int8: Path
    pixels: np.ndarray  # batch 3 through graphs traced at batch 1
    expected: np.ndarray  # torch map


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Graphs:
    out = tmp_path_factory.mktemp("precision")
    cfg = get_preset("tiny")
    # Random resnet18: graph mechanics; the preset's ImageNet Lite0 is costed on a trained run (test_bundle).
    cfg.logical.encoder = "resnet18"
    torch.manual_seed(0)
    embedding = nn.functional.normalize(torch.randn(CLIP_DIM), dim=0)
    net = NpgmfLogicalNet(cfg.logical, SIZE, embedding, pretrained=False, weights=None, warn_random=False)
    net.eval()
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(3, 3, SIZE, SIZE, generator=generator) * 255
    calibration = [(torch.rand(4, 3, SIZE, SIZE, generator=generator) * 255).numpy() for _ in range(3)]
    with torch.no_grad():
        expected = net(pixels).numpy()
    raw = export_onnx(net, pixels[:1], out / "logical.raw.onnx", INPUT, ["logical_map"])
    fp32 = simplify(raw, out / "logical.fp32.onnx")
    return Graphs(
        raw=raw,
        fp32=fp32,
        fp16=convert_fp16(fp32, out / "logical.fp16.onnx"),
        int8=quantize_int8(fp32, out / "logical.int8.onnx", calibration),
        pixels=pixels.numpy(),
        expected=expected,
    )


def run(graph: Path | onnx.ModelProto, pixels: np.ndarray) -> list[np.ndarray]:
    model = graph.SerializeToString() if isinstance(graph, onnx.ModelProto) else str(graph)
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {INPUT: pixels})


def dims(values) -> list[list[int | str]]:
    return [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values]


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of `model` (inferred), initializers included."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def float_tensors_of(node: onnx.NodeProto, types: dict[str, int]) -> list[int]:
    """Element types of the floating-point inputs and outputs of `node`."""
    return [types[n] for n in (*node.input, *node.output) if types.get(n) in (FLOAT, FLOAT16)]


def without_islands(graph: Path) -> onnx.ModelProto:
    """The same FP16 conversion with nothing kept FP32, for contrast."""
    with warnings.catch_warnings():  # weights clamped to FP16's range, one warning each
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(onnx.load(str(graph)), keep_io_types=True)


def fp16_round_trips(model: onnx.ModelProto) -> list[str]:
    """Cast(FP32) nodes that read a Cast(FP16): an FP32 tensor rounded to FP16 and back."""
    casts = {n.output[0]: n.attribute[0].i for n in model.graph.node if n.op_type == "Cast"}
    return [n.name for n in model.graph.node if n.op_type == "Cast" and casts.get(n.input[0]) == FLOAT16]


def fed_by_dequantize(model: onnx.ModelProto, names: set[str]) -> list[str]:
    """Those of the nodes `names` that read a DequantizeLinear output."""
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    return [
        node.name
        for node in model.graph.node
        if node.name in names and any(producer.get(i) == "DequantizeLinear" for i in node.input)
    ]


def scope(name: str) -> str:
    return name.rsplit("/", 1)[0]


def test_simplified_graph_matches_torch_and_keeps_interface_and_names(graphs: Graphs) -> None:
    got = run(graphs.fp32, graphs.pixels)[0]
    assert got.shape == graphs.expected.shape
    assert np.abs(got - graphs.expected).max() <= 1e-5  # measured 4.8e-7

    raw, slim = onnx.load(str(graphs.raw)), onnx.load(str(graphs.fp32))
    assert [o.version for o in slim.opset_import if o.domain == ""] == [17]
    assert dims(slim.graph.input) == [["batch", 3, SIZE, SIZE]]
    assert dims(slim.graph.output) == [["batch", 1, SIZE, SIZE]]  # the exporter left these symbolic
    assert len(slim.graph.node) < len(raw.graph.node)  # 557 -> 318 nodes
    assert not {n.op_type for n in slim.graph.node} & {"Constant", "Identity"}  # all folded
    assert graphs.fp32.stat().st_size <= graphs.raw.stat().st_size  # shared weights stay shared
    # onnxslim renames only the nodes it fuses, and keeps their scope as a prefix.
    assert {scope(n.name) for n in slim.graph.node} <= {scope(n.name) for n in raw.graph.node}
    for op in ("ArgMin", "LayerNormalization", "ReduceL2", "Softmax"):
        names = {n.name for n in raw.graph.node if n.op_type == op}
        assert names == {n.name for n in slim.graph.node if n.op_type == op}, op


def node(op: str, inputs: list[str], outputs: list[str], name: str) -> onnx.NodeProto:
    return onnx.helper.make_node(op, inputs, outputs, name=name)


def test_island_rules_on_named_and_unscoped_nodes() -> None:
    nodes = [
        node("Conv", ["x", "w"], ["f"], "/encoder/Conv"),
        # vector quantiser called as a function: no scope, found by structure (rule 3)
        node("Transpose", ["f"], ["zt"], "/Transpose"),
        node("MatMul", ["zt", "codebook_t"], ["dot"], "/MatMul"),
        node("Mul", ["dot", "two"], ["dot2"], "/Mul"),
        node("Sub", ["codebook_sq", "dot2"], ["dist"], "/Sub"),
        node("ArgMin", ["dist"], ["idx"], "/ArgMin"),
        node("Gather", ["codebook", "idx"], ["codes"], "/Gather"),
        node("Transpose", ["codes"], ["q"], "/Transpose_1"),
        # LayerNorm decomposed (rules 2 and 4), then attention that stays FP16 / INT8
        node("ReduceMean", ["q"], ["mu"], "/norm/ReduceMean"),
        node("Sub", ["q", "mu"], ["c"], "/norm/Sub"),
        node("Pow", ["c", "two"], ["c2"], "/norm/Pow"),
        node("ReduceMean", ["c2"], ["var"], "/norm/ReduceMean_1"),
        node("Add", ["var", "eps"], ["var_eps"], "/norm/Add"),
        node("Sqrt", ["var_eps"], ["std"], "/norm/Sqrt"),
        node("Div", ["c", "std"], ["n"], "/norm/Div"),
        node("MatMul", ["n", "w_qkv"], ["qkv"], "/attn/qkv/MatMul"),
        node("Softmax", ["qkv"], ["p"], "/attn/Softmax"),
        node("LayerNormalization", ["p", "g", "b"], ["ln"], "/block/norm2/LayerNormalization"),
        node("Relu", ["ln"], ["r"], "/block/Relu"),
        # whole scopes (rule 1)
        node("Conv", ["r", "w2"], ["s"], "/quantizers.0/Conv"),
        node("Gemm", ["s", "bank"], ["d"], "/structural/knn/Gemm"),
        node("ReduceMin", ["d"], ["m"], "/structural/knn/ReduceMin"),
        node("Add", ["m", "s"], ["fused"], "/fusion/Add"),
        node("Conv", ["fused", "kernel"], ["smooth"], "/smooth/Conv"),
        node("Resize", ["smooth", "", "scales"], ["map"], "/anomaly_map/Resize"),
        node("Relu", ["map"], ["y"], "/head/Relu"),
    ]
    graph = onnx.helper.make_graph(nodes, "islands", [], [])
    islands = fp32_island_nodes(onnx.helper.make_model(graph))
    expected = [
        "/MatMul", "/Mul", "/Sub", "/ArgMin", "/Gather",
        "/norm/ReduceMean", "/norm/Sub", "/norm/Pow", "/norm/ReduceMean_1", "/norm/Add", "/norm/Sqrt",
        "/norm/Div", "/block/norm2/LayerNormalization",
        "/quantizers.0/Conv", "/structural/knn/Gemm", "/structural/knn/ReduceMin", "/fusion/Add",
        "/smooth/Conv", "/anomaly_map/Resize",
    ]  # fmt: skip
    assert islands == expected  # graph order; no Conv, Transpose, attention MatMul, Softmax or Relu


def test_fp16_graph_keeps_islands_fp32_and_tracks_torch(graphs: Graphs) -> None:
    model = onnx.load(str(graphs.fp16))
    assert [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)] == [FLOAT] * 2
    assert dims(model.graph.input) == [["batch", 3, SIZE, SIZE]]
    types = tensor_types(model)
    by_op: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        by_op.setdefault(n.op_type, []).append(n)
    for op in ("ArgMin", "LayerNormalization", "ReduceL2", "ReduceSum"):
        assert by_op[op] and all(set(float_tensors_of(n, types)) == {FLOAT} for n in by_op[op]), op
    distance_matmuls = [n for n in by_op["MatMul"] if n.name.startswith("/MatMul")]  # unscoped: the VQ
    assert len(distance_matmuls) == 3 and all(types[n.input[0]] == FLOAT for n in distance_matmuls)
    assert all(types[n.input[1]] == FLOAT16 for n in by_op["Conv"])  # the bulk of the net is FP16
    assert all(types[n.output[0]] == FLOAT16 for n in by_op["Softmax"])
    assert not fp16_round_trips(model)

    got = run(graphs.fp16, graphs.pixels)[0]
    assert got.dtype == np.float32
    err = np.abs(got - graphs.expected)
    # measured: max 2.0e-4, mean 6.8e-5 on a map of 1.6 .. 2.0; 6.8e-4 / 1.4e-4 without the islands
    assert err.max() <= 6e-4 and err.mean() <= 2e-4


def test_int8_graph_is_symmetric_per_channel_qdq_outside_islands(graphs: Graphs) -> None:
    model = onnx.load(str(graphs.int8))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert dims(model.graph.input) == [["batch", 3, SIZE, SIZE]]  # survives quant_pre_process
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert {n.op_type for n in qdq} == {"QuantizeLinear", "DequantizeLinear"}
    zero_points = [initializers[n.input[2]] for n in qdq]
    assert all(z.dtype == np.int8 and not z.any() for z in zero_points)  # symmetric

    islands = set(fp32_island_nodes(model))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and not islands & {n.name for n in convs}
    float_convs = [c for c in convs if c.input[1] in initializers]  # weight read directly, not via DQ
    # Float by design: the frozen encoder (its stem over the 3 colour channels among them) and the
    # depthwise convs (the LeFF blocks'); every other conv is quantised.
    groups = {c.name: next((a.i for a in c.attribute if a.name == "group"), 1) for c in convs}
    encoder = [c for c in convs if "/encoder/" in c.name]
    assert len(encoder) == 15 and {c.name for c in encoder} <= {c.name for c in float_convs}
    stems = [c for c in encoder if initializers[c.input[1]].shape[1] == 3]
    assert len(stems) == 1
    assert len(float_convs) - len(encoder) == sum(g > 1 for g in groups.values()) == 3
    assert all(producer[c.input[0]].op_type != "DequantizeLinear" for c in float_convs)
    quantized = [c for c in convs if c.input[1] not in initializers]
    assert len(quantized) == len(convs) - len(float_convs) > 0
    for conv in quantized:  # input and weight through Q/DQ, one weight scale per output channel
        weight_dq = producer[conv.input[1]]
        weight = initializers[weight_dq.input[0]]
        assert producer[conv.input[0]].op_type == "DequantizeLinear"
        assert weight.dtype == np.int8 and initializers[weight_dq.input[1]].shape == (weight.shape[0],)
    assert not fed_by_dequantize(model, islands)
    attention = {n.name for n in model.graph.node if n.name.endswith(("/attn/MatMul", "/attn/MatMul_1"))}
    assert len(attention) == 6 and not fed_by_dequantize(model, attention)

    got = run(graphs.int8, graphs.pixels)[0]
    fp32 = run(graphs.fp32, graphs.pixels)[0]
    err = np.abs(got - fp32)
    assert err.max() <= 2e-2 and err.mean() <= 4e-3  # measured: max 6.5e-3, mean 1.4e-3


class KnnHead(nn.Module):
    """Distance of every position to its nearest memory-bank row: one GEMM, ReduceMin, Sqrt."""

    def __init__(self, bank: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bank", bank)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        q = features.flatten(2).transpose(1, 2)  # (B, h*w, C)
        d2 = (q * q).sum(-1, keepdim=True) - 2.0 * q @ self.bank.t() + (self.bank * self.bank).sum(-1)
        return d2.clamp_min(0).amin(-1).sqrt().reshape(-1, 1, *features.shape[-2:])


class Fusion(nn.Module):
    def forward(self, distances: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return 0.7 * distances + 0.3 * other


class HeadNet(nn.Module):
    """Conv features read by a plain Conv head and by `knn`; `fusion` mixes both."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=4, padding=1)
        self.head = nn.Conv2d(16, 1, 1)
        self.knn = KnnHead(torch.randn(32, 16))
        self.fusion = Fusion()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.stem(pixels / 255))
        return self.fusion(self.knn(features), self.head(features))


def test_knn_and_fusion_scopes_stay_fp32_in_both_conversions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = HeadNet().eval()
    pixels = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():
        expected = net(pixels).numpy()
    fp32 = simplify(
        export_onnx(net, pixels[:1], tmp_path / "raw.onnx", INPUT, ["map"]), tmp_path / "fp32.onnx"
    )
    fp16 = onnx.load(str(convert_fp16(fp32, tmp_path / "fp16.onnx")))
    calibration = [(torch.rand(4, 3, 32, 32) * 255).numpy()]
    int8 = onnx.load(str(quantize_int8(fp32, tmp_path / "int8.onnx", calibration)))

    types = tensor_types(fp16)
    heads = [n for n in fp16.graph.node if n.name.startswith(("/knn/", "/fusion/")) and n.op_type != "Cast"]
    assert {n.op_type for n in heads} >= {"MatMul", "ReduceMin", "Sqrt", "Mul", "Add"}
    assert all(set(float_tensors_of(n, types)) == {FLOAT} for n in heads)
    assert not fp16_round_trips(fp16)  # the converter left one where /knn/Transpose fans out
    head_names = {n.name for n in int8.graph.node if n.name.startswith(("/knn/", "/fusion/"))}
    assert head_names == {n.name for n in heads}
    # /knn/ reads the same features as the quantised /head/Conv, which shares one Q/DQ pair with it
    assert not fed_by_dequantize(int8, head_names)
    # ... and the stem over the colour channels stays float (`precision._int8_sensitive_convs`)
    assert fed_by_dequantize(int8, {"/head/Conv", "/stem/Conv"}) == ["/head/Conv"]

    fp16_err = np.abs(run(fp16, pixels.numpy())[0] - expected).max()
    int8_err = np.abs(run(int8, pixels.numpy())[0] - expected).max()
    scale = np.abs(expected).max()  # 1.9
    assert fp16_err <= 1e-4 * scale  # measured 2.8e-5 * scale
    assert int8_err <= 6e-3 * scale  # measured 1.9e-3 * scale


class Codes(nn.Module):
    """A vector quantiser whose 64 codes lie within 0.02 of each other: FP16 distances tie."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 1)
        self.vq = VectorQuantizer(64, 8)
        with torch.no_grad():
            self.vq.codebook.copy_(4.0 + 0.02 * torch.randn(64, 8))
            self.proj.weight.mul_(1e-3)
            self.proj.bias.fill_(4.0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vq.quantize(self.proj(pixels / 255))[0]


def test_fp16_nearest_codes_need_the_distance_island(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Codes().eval()
    pixels = torch.rand(2, 3, 16, 16) * 255
    with torch.no_grad():
        expected = net(pixels).numpy()
    fp32 = export_onnx(net, pixels[:1], tmp_path / "codes.onnx", INPUT, ["codes"])
    codebook = net.vq.codebook.detach().numpy()

    def flip_rate(codes: np.ndarray) -> float:
        nearest = ((codes.transpose(0, 2, 3, 1)[..., None, :] - codebook) ** 2).sum(-1).argmin(-1)
        reference = ((expected.transpose(0, 2, 3, 1)[..., None, :] - codebook) ** 2).sum(-1).argmin(-1)
        return float((nearest != reference).mean())

    assert flip_rate(run(convert_fp16(fp32, tmp_path / "fp16.onnx"), pixels.numpy())[0]) == 0.0
    # measured 1.0 without the islands: every position flips
    assert flip_rate(run(without_islands(fp32), pixels.numpy())[0]) > 0.5


class TwinMaps(nn.Module):
    """Encoder and decoder features that nearly agree, as on normal images: a near-zero Eq. 7 map."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 32, 3, stride=4, padding=1)
        self.dec = nn.Conv2d(3, 32, 3, stride=4, padding=1)
        with torch.no_grad():
            self.dec.weight.copy_(self.enc.weight + 1e-3 * torch.randn_like(self.enc.weight))
            self.dec.bias.copy_(self.enc.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels / 255
        return logical_anomaly_map([self.enc(x)], [self.dec(x)], 32)


def test_fp16_near_zero_anomaly_map_needs_the_cosine_island(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TwinMaps().eval()
    pixels = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():
        expected = net(pixels).numpy()  # 1.5e-5 .. 5.9e-5
    fp32 = export_onnx(net, pixels[:1], tmp_path / "twin.onnx", INPUT, ["map"])

    def relative_error(got: np.ndarray) -> float:
        return float((np.abs(got - expected) / expected).mean())

    # measured mean relative error: 0.006 with the islands, 3.6 without
    assert relative_error(run(convert_fp16(fp32, tmp_path / "fp16.onnx"), pixels.numpy())[0]) < 0.02
    assert relative_error(run(without_islands(fp32), pixels.numpy())[0]) > 1.0


@pytest.fixture
def small_graph(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return export_onnx(TwinMaps().eval(), torch.zeros(1, 3, 32, 32), tmp_path / "small.onnx", INPUT, ["map"])


def test_unreadable_or_old_graphs_are_bundle_errors(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"cannot read ONNX graph .*missing\.onnx"):
        simplify(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07not a protobuf")
    with pytest.raises(BundleError, match=r"cannot read ONNX graph .*junk\.onnx"):
        convert_fp16(tmp_path / "junk.onnx", tmp_path / "out.onnx")
    old = export_onnx(
        TwinMaps().eval(), torch.zeros(1, 3, 32, 32), tmp_path / "old.onnx", INPUT, ["m"], opset=13
    )
    with pytest.raises(BundleError, match=r"old\.onnx has opset 13"):
        quantize_int8(old, tmp_path / "out.onnx", [np.zeros((1, 3, 32, 32), np.float32)])
    assert not (tmp_path / "out.onnx").exists()


def test_bad_calibration_input_is_a_config_error_naming_the_graph(small_graph: Path, tmp_path: Path) -> None:
    dst = tmp_path / "int8.onnx"
    with pytest.raises(ConfigError, match=r"no calibration batches .*small\.onnx"):
        quantize_int8(small_graph, dst, [])
    with pytest.raises(
        ConfigError, match=r"shape \(2, 3, 16, 16\) does not fit .*small\.onnx.*\(batch, 3, 32, 32\)"
    ):
        quantize_int8(small_graph, dst, [np.zeros((2, 3, 16, 16), np.float32)])
    with pytest.raises(ConfigError, match=r"small\.onnx has no input 'image'"):
        quantize_int8(small_graph, dst, [np.zeros((2, 3, 32, 32), np.float32)], input_name="image")
    assert not dst.exists()
