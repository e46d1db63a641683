"""Deployable precision variants of an exported FP32 graph: simplified FP32, FP16 and INT8 (Q/DQ).

TensorRT 11 removes implicit quantisation (the INT8 calibrator, the FP16 / INT8 builder flags): precision
lives in the ONNX graph itself (FP16 tensors, or QuantizeLinear / DequantizeLinear pairs for INT8). From
the one `export_onnx` graph (opset 17, dynamic batch axis, static spatial shapes) this writes:

* `simplify`: onnxslim's constant folding and clean-up; the FP32 deployable and the others' input.
* `fp32_island_nodes`: the nodes whose numerics break in FP16 or INT8; both conversions keep them FP32.
* `convert_fp16`: FP16 everywhere else, float32 inputs and outputs.
* `quantize_int8`: symmetric INT8 Q/DQ, calibrated on normal training images, with 7-bit weights
  (`int8_safety`: no product saturates without VNNI); the encoder, depthwise and stem convolutions stay float.

Every graph passes `onnx.checker` (full check) before `atomic_write` moves it into place.
"""

from __future__ import annotations

import itertools
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxslim
from google.protobuf.message import DecodeError
from onnxconverter_common import float16
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from npgmf_edge.errors import BundleError, ConfigError
from npgmf_edge.export.int8_safety import saturation_risks
from npgmf_edge.fileio import atomic_write

MIN_OPSET = 17  # LayerNormalization as one op; what export_onnx writes

# --- FP32 islands -------------------------------------------------------------------------------------
# Module scopes kept whole: the vector quantisers, the nearest-neighbour head and fusion / smoothing.
ISLAND_SCOPES = ("/quantizers.", "/knn", "/fusion", "/smooth", "anomaly")
# Ops that are fragile on their own: an arg-min/max flips on a rounding, normalisations divide by a
# small statistic. Every Reduce* op is an island too (sums of squares overflow FP16 at 65504).
ARG_OPS = frozenset({"ArgMin", "ArgMax"})
ISLAND_OP_TYPES = ARG_OPS | {
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "LpNormalization",
}
REDUCE_PREFIX = "Reduce"
# Element-wise and data-movement ops that carry a reduction's result onwards (the L2 norm into the
# divide of F.normalize, the channel sum into 1 - cos, resize and sum over levels): they join the island.
TAIL_OPS = frozenset(
    {
        "Abs", "Add", "Clip", "Div", "Exp", "Expand", "Identity", "Log", "Max", "Min", "Mul",
        "Neg", "Pow", "Reciprocal", "Reshape", "Resize", "Slice", "Sqrt", "Squeeze", "Sub", "Transpose",
        "Unsqueeze", "Where",
    }
)  # fmt: skip
# Upstream of an arg-min/max: the distance arithmetic back to (and including) the MatMul / Gemm.
DISTANCE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Pow", "Sqrt", "Abs"})
DISTANCE_PRODUCTS = frozenset({"MatMul", "Gemm"})
INDEX_CONSUMERS = frozenset({"Gather", "GatherElements", "GatherND"})  # the code lookup after argmin
ISLAND_COPY_SUFFIX = "_fp32_island"  # initializers duplicated for island nodes

# --- FP16 ---------------------------------------------------------------------------------------------
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
FP16_COPY_SUFFIX = "_fp16"  # FP16 copy of an island-computed graph output, for FP16 readers

# --- INT8 ---------------------------------------------------------------------------------------------
# TensorRT runs Q/DQ-fed convolutions and GEMMs as INT8 kernels; other ops between them run in higher
# precision anyway, so Q/DQ around them would only add reformat layers (quantising Add measured worse).
# ConvTranspose (three small upsampling layers) stays float: INT8 measured no better there.
INT8_OP_TYPES = ("Conv", "MatMul", "Gemm")
RGB_CHANNELS = 3  # a stem convolution reads the normalised colour image (`_int8_sensitive_convs`)
ENCODER_SCOPE = "/encoder/"  # the frozen encoder(s) of InspectionNet: float in INT8 graphs
CALIBRATION_METHOD = CalibrationMethod.MinMax
INT8_EXTRA_OPTIONS = {
    "ActivationSymmetric": True,  # TensorRT requires zero points of 0
    "WeightSymmetric": True,
    "QuantizeBias": False,  # TensorRT adds float biases itself; it has no INT32 DequantizeLinear
    "DedicatedQDQPair": True,  # one Q/DQ pair per consumer, as TensorRT expects
    # Inputs only, as TensorRT's placement guide asks: it fuses an output Q into the producer itself
    # when the consumer is quantised, and a Q/DQ before a float residual Add only adds rounding.
    "OpTypesToExcludeOutputQuantization": list(INT8_OP_TYPES),
}


def _load(path: Path) -> onnx.ModelProto:
    """Read an ONNX graph of opset >= MIN_OPSET and name its unnamed nodes (islands and exclusions
    are lists of names); BundleError naming the file otherwise."""
    try:
        model = onnx.load(str(path))
    except (OSError, DecodeError) as exc:
        raise BundleError(f"cannot read ONNX graph {path}: {exc}") from exc
    opset = _opset(model)
    if opset < MIN_OPSET:
        raise BundleError(f"ONNX graph {path} has opset {opset}; export it with opset {MIN_OPSET} or later")
    for k, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{k}"
    return model


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _write_checked(model: onnx.ModelProto, dst: Path) -> Path:
    """Full onnx.checker pass on the temporary file, then move it into place."""

    def write(tmp: Path) -> None:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)

    return atomic_write(Path(dst), write)


def _dims(values: Iterable[onnx.ValueInfoProto]) -> dict[str, list[int | str]]:
    """name -> [dim_value or dim_param, ...] for graph inputs or outputs."""
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def simplify(src: Path, dst: Path) -> Path:
    """Constant-fold and clean up `src` with onnxslim into `dst`; returns `dst`. onnxslim, not onnxruntime's
    offline optimiser: plain ONNX for any runtime, node scopes kept (`fp32_island_nodes` finds them). Shape
    inference then makes output sizes static; inputs and opset must come out unchanged."""
    model = _load(src)
    try:
        slim = onnxslim.slim(model)
    except Exception as exc:  # onnxslim raises whatever its passes raise
        raise BundleError(f"onnxslim could not simplify {src}: {exc}") from exc
    _tie_equal_initializers(slim)
    slim = onnx.shape_inference.infer_shapes(slim, data_prop=True)
    if _dims(slim.graph.input) != _dims(model.graph.input) or _opset(slim) != _opset(model):
        raise BundleError(f"simplifying {src} changed its inputs or opset; keep the FP32 graph instead")
    return _write_checked(slim, dst)


def _tie_equal_initializers(model: onnx.ModelProto) -> None:
    """Let every user of equal initializers read one copy (in place): onnxslim unties weights shared
    through Identity nodes above 1000 elements (6% on the tiny net's file)."""
    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    same: dict[str, str] = {}
    for tensor in model.graph.initializer:
        key = (tensor.data_type, tuple(tensor.dims), tensor.raw_data)
        if tensor.raw_data and key in first:
            same[tensor.name] = first[key]
        else:
            first.setdefault(key, tensor.name)
    for node in model.graph.node:
        node.input[:] = [same.get(name, name) for name in node.input]
    kept = [t for t in model.graph.initializer if t.name not in same]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def _is_island_op(node: onnx.NodeProto) -> bool:
    return (
        node.op_type in ISLAND_OP_TYPES
        or node.op_type.startswith(REDUCE_PREFIX)
        or any(scope in node.name for scope in ISLAND_SCOPES)
    )


def fp32_island_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that stay FP32 in the FP16 and INT8 graphs, in graph order.

    A node is an island when
      1. its name contains a module scope in ISLAND_SCOPES ("/quantizers.", "/knn", "/fusion",
         "/smooth", "anomaly"): whole heads whose outputs are distances or scores;
      2. its op is an arg-min/max or a normalisation (ISLAND_OP_TYPES), or any Reduce* op: one rounding
         flips an index, divides by a tiny statistic or overflows a sum of squares;
      3. it computes the distance an arg-min/max ranks: walking up from the arg-min/max through
         DISTANCE_OPS up to and including the first MatMul / Gemm (the VQ's ||e||^2 - 2 z.e), plus the
         Gather that looks the chosen codes up. The VQ and the anomaly map are called as functions, not
         modules, so their nodes carry no scope; this rule and the next find them by structure;
      4. it is an element-wise or data-movement op (TAIL_OPS) fed by a Reduce* op or by another such
         op: the rest of a decomposed LayerNorm, F.normalize's divide, 1 - cos and the resize / sum of
         the anomaly map, down to the graph output.
    Measured in FP16 (tests/export/test_precision.py): without rule 3 near-tied codes flip, without rule
    4 a near-zero map is off by several times its value. Softmax is no island: its logits are bounded.
    """
    nodes = list(model.graph.node)
    producer = {out: node for node in nodes for out in node.output}
    island = {node.name for node in nodes if _is_island_op(node)} | _distance_nodes(nodes, producer)
    tail = {node.name for node in nodes if node.op_type.startswith(REDUCE_PREFIX)}
    for node in nodes:  # graph order is topological: one sweep follows every tail to its end
        if node.op_type in TAIL_OPS and any(
            name in producer and producer[name].name in tail for name in node.input
        ):
            tail.add(node.name)
    return [node.name for node in nodes if node.name in island | tail]


def _distance_nodes(nodes: list[onnx.NodeProto], producer: dict[str, onnx.NodeProto]) -> set[str]:
    """Rule 3 of `fp32_island_nodes`: what each arg-min/max ranks, and the lookup of what it picked."""
    found: set[str] = set()
    for node in nodes:
        if node.op_type not in ARG_OPS:
            continue
        stack = [node]
        while stack:
            for name in stack.pop().input:
                up = producer.get(name)
                if up is None or up.name in found:
                    continue
                if up.op_type in DISTANCE_OPS or up.op_type.startswith(REDUCE_PREFIX):
                    found.add(up.name)
                    stack.append(up)
                elif up.op_type in DISTANCE_PRODUCTS:
                    found.add(up.name)
        found.update(n.name for n in nodes if n.op_type in INDEX_CONSUMERS and n.input[1] == node.output[0])
    return found


def convert_fp16(src: Path, dst: Path) -> Path:
    """FP16 copy of `src` at `dst` with `fp32_island_nodes` kept FP32 and float32 inputs / outputs;
    the helpers below repair three slips of onnxconverter-common's casts at island borders."""
    model = _load(src)
    islands = fp32_island_nodes(model)
    _unshare_initializers(model, set(islands))
    del model.graph.value_info[:]  # the converter would keep FP32 types of tensors it makes FP16
    with warnings.catch_warnings():  # one warning per weight below FP16's range, clamped to +-1e-7
        warnings.simplefilter("ignore", UserWarning)
        fp16 = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=islands)
    _float32_island_outputs(fp16, set(islands))
    _drop_fp16_round_trips(fp16)
    return _write_checked(fp16, dst)


def _cast_to(node: onnx.NodeProto) -> int | None:
    """The `to` type of a Cast node, None for other ops."""
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def _drop_fp16_round_trips(model: onnx.ModelProto) -> None:
    """Let Cast(FP32) nodes that read a Cast(FP16) read its FP32 input instead (in place): the converter
    keeps such pairs where a tensor fans out to several islands (FP16 rounding inside the kNN head)."""
    graph_outputs = {o.name for o in model.graph.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    dropped: list[onnx.NodeProto] = []
    for down in [n for n in model.graph.node if _cast_to(n) == FLOAT16]:
        fp16_readers = readers.get(down.output[0], [])
        for up in fp16_readers:
            if _cast_to(up) != FLOAT or up.output[0] in graph_outputs:
                continue
            for reader in readers.get(up.output[0], []):
                reader.input[:] = [down.input[0] if n == up.output[0] else n for n in reader.input]
            dropped.append(up)
        if down.output[0] not in graph_outputs and all(any(r is d for d in dropped) for r in fp16_readers):
            dropped.append(down)
    for node in dropped:
        model.graph.node.remove(node)


def _float32_island_outputs(model: onnx.ModelProto, islands: set[str]) -> None:
    """Give graph outputs computed by islands back their FP32 tensor (in place): onnxconverter-common 1.16
    casts them to FP16 anyway. The Cast then feeds only the FP16 nodes that read it, if any."""
    producer = {out: node for node in model.graph.node for out in node.output}
    for output in model.graph.output:
        cast = producer.get(output.name)
        if output.type.tensor_type.elem_type != FLOAT16 or cast is None or _cast_to(cast) != FLOAT16:
            continue
        island = producer.get(cast.input[0])
        if island is None or island.name not in islands:
            continue
        island.output[list(island.output).index(cast.input[0])] = output.name
        cast.input[0], cast.output[0] = output.name, output.name + FP16_COPY_SUFFIX
        fp16_readers = [n for n in model.graph.node if n is not cast and n.name not in islands]
        for node in fp16_readers:
            for k, name in enumerate(node.input):
                if name == output.name:
                    node.input[k] = cast.output[0]
        if not any(cast.output[0] in n.input for n in fp16_readers):
            model.graph.node.remove(cast)
        output.type.tensor_type.elem_type = FLOAT


def _unshare_initializers(model: onnx.ModelProto, islands: set[str]) -> None:
    """Give island nodes their own copy of each initializer they share with other nodes (in place): a
    tied constant would reach an FP16 Conv as FP32, or an island dequantised."""
    initializers = {t.name: t for t in model.graph.initializer}
    outside = {name for node in model.graph.node if node.name not in islands for name in node.input}
    for node in model.graph.node:
        if node.name not in islands:
            continue
        for k, name in enumerate(node.input):
            if name not in initializers or name not in outside:
                continue
            copy = name + ISLAND_COPY_SUFFIX
            if copy not in initializers:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(initializers[name])
                tensor.name = copy
                model.graph.initializer.append(tensor)
                initializers[copy] = tensor
            node.input[k] = copy


class _BatchReader(CalibrationDataReader):
    """Feeds calibration batches (B, 3, S, S) to the calibrator, checking each against the graph input."""

    def __init__(self, batches: Iterator[np.ndarray], input_name: str, shape: tuple[int, ...], src: Path):
        self._batches = batches
        self._input_name = input_name
        self._shape = shape  # without the batch axis
        self._src = src

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != len(self._shape) + 1 or batch.shape[1:] != self._shape:
            raise ConfigError(
                f"calibration batch of shape {batch.shape} does not fit input {self._input_name!r} of "
                f"{self._src}, which takes (batch, {', '.join(map(str, self._shape))})"
            )
        return {self._input_name: np.ascontiguousarray(batch)}


def _input_shape(model: onnx.ModelProto, input_name: str, src: Path) -> tuple[int, ...]:
    """Static shape of `input_name` without its batch axis; ConfigError naming `src` if it has none."""
    dims = _dims(model.graph.input)
    if input_name not in dims:
        raise ConfigError(f"ONNX graph {src} has no input {input_name!r}; it has {sorted(dims)}")
    rest = dims[input_name][1:]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise ConfigError(
            f"input {input_name!r} of {src} needs static sizes after the batch axis, not {rest}"
        )
    return tuple(rest)


def quantize_int8(
    src: Path, dst: Path, calibration_batches: Iterable[np.ndarray], *, input_name: str = "pixels"
) -> Path:
    """INT8 Q/DQ copy of `src` at `dst`, calibrated on float32 (B, 3, S, S) batches of normal training
    images (raw [0, 255]); returns `dst`. `quant_pre_process` without its optimisation pass, which would
    fold island nodes into quantised Convs: the islands stay those of the FP16 graph."""
    model = _load(src)
    shape = _input_shape(model, input_name, src)
    batches = iter(calibration_batches)
    first = next(batches, None)
    if first is None:
        raise ConfigError(f"no calibration batches were given to quantise {src}")
    reader = _BatchReader(itertools.chain([first], batches), input_name, shape, src)
    with tempfile.TemporaryDirectory(prefix="npgmf-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "quantized.onnx"
        quant_pre_process(model, str(prepared), skip_optimization=True)
        prepared_model = onnx.load(str(prepared))
        islands = fp32_island_nodes(prepared_model)
        _unshare_initializers(prepared_model, set(islands))
        excluded = islands + _activation_matmuls(prepared_model) + _int8_sensitive_convs(prepared_model)
        quantize_static(
            prepared_model,
            str(quantized),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(INT8_OP_TYPES),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CALIBRATION_METHOD,
            # 7-bit weights ([-64, 64]): 8-bit ones saturate the int16 pair sums of x86 CPUs without VNNI,
            # and the bundle would answer differently there (`int8_safety`).
            reduce_range=True,
            extra_options=dict(INT8_EXTRA_OPTIONS),
        )
        result = onnx.load(str(quantized))
    _feed_islands_float(result, set(islands))
    check_no_saturation(result, dst)
    return _write_checked(result, dst)


def check_no_saturation(model: onnx.ModelProto, path: Path) -> None:
    """BundleError naming `path` and the first product whose int16 pair sums could saturate without VNNI."""
    risks = saturation_risks(model)
    if risks:
        raise BundleError(
            f"{path}: {len(risks)} INT8 product(s) could saturate on x86 CPUs without VNNI, first {risks[0]} "
            "> 32767; its weights must be 7-bit (|w| <= 64)"
        )


def _activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls of two activations (attention's q.k and p.v), left in float: INT8 softmax probabilities
    (1/127 steps) measured worse, and windowed attention is a sliver of the compute. onnxruntime's
    MatMulConstBOnly option is ignored for Q/DQ output, so they are excluded by name."""
    weights = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not weights & set(n.input)]


def _int8_sensitive_convs(model: onnx.ModelProto) -> list[str]:
    """Convolutions left in float: depthwise ones and stems over the 3 colour channels (they lose most to
    INT8), and every convolution of the frozen encoder (the structural branch's distances magnify their
    rounding); measured in docs/DEPLOY.md "INT8 on the Lite presets". The trained logical network and the
    structural aggregator stay INT8."""
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        stem = weights[node.input[1]][1] * group == RGB_CHANNELS
        if group > 1 or stem or ENCODER_SCOPE in node.name:
            names.append(node.name)
    return names


def _feed_islands_float(model: onnx.ModelProto, islands: set[str]) -> None:
    """Point island inputs that read a Q -> DQ copy of an activation back at the float tensor (in place):
    the quantiser shares one Q/DQ pair between a quantised node and the islands reading the same tensor."""
    producer = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.name not in islands:
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]
