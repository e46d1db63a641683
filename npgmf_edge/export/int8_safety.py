"""INT8 products that give the same integers on every CPU: no int16 pair saturation without VNNI.

x86 CPUs without VNNI sum each pair of u8 x s8 products into a saturating int16 (`vpmaddubsw`), which
onnxruntime uses for every INT8 product of a bundle: with 8-bit weights a pair reaches 2 x 255 x 127 and
is clipped, so the bundle answers differently with and without VNNI (docs/DEPLOY.md, "One answer on every
machine"). Weights of at most `SAFE_WEIGHT_MAX` = 64 in magnitude (7-bit, `reduce_range`) bound every pair
by 2 x 255 x 64 = 32,640 <= 32,767: exact on every ISA. `saturation_risks` reads a finished graph's integer
weights and reports any product that could exceed int16; the export refuses such a graph.

Example:
    >>> saturation_risks(onnx.load("bundle/model.int8.onnx"))
    []
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

SAFE_WEIGHT_MAX = 64  # onnxruntime's reduce_range for symmetric int8 weights: [-64, 64]
U8_MAX = 255  # activations reach the kernel as u8 (s8 shifted by +128, or u8 as quantised)
INT16_MAX = 32767
INT16_MIN = -32768
PRODUCT_OPS = frozenset({"Conv", "MatMul", "Gemm"})  # what `precision.quantize_int8` quantises


@dataclass(frozen=True)
class SaturationRisk:
    node: str
    op_type: str
    worst_pair_sum: int  # largest |a0 w0 + a1 w1| over u8 activations and adjacent weight pairs

    def __str__(self) -> str:
        return f"{self.node} ({self.op_type}): a pair of u8 x s8 products reaches {self.worst_pair_sum}"


def integer_weights(model: onnx.ModelProto) -> dict[str, tuple[str, np.ndarray]]:
    """node name -> (op type, int weights as (K, N): one column per output, K the reduction axis) for every
    INT8 product of `model`: Q/DQ-fed Conv / MatMul / Gemm weights, and `MatMulInteger`'s constant B."""
    initializers = {t.name: t for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    found: dict[str, tuple[str, np.ndarray]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMulInteger" and node.input[1] in initializers:
            found[node.name] = (node.op_type, numpy_helper.to_array(initializers[node.input[1]]))
            continue
        if node.op_type not in PRODUCT_OPS or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in initializers:
            continue
        weights = numpy_helper.to_array(initializers[dq.input[0]])
        if weights.dtype not in (np.int8, np.uint8):
            continue
        found[node.name] = (node.op_type, _as_columns(node, weights))
    return found


def _as_columns(node: onnx.NodeProto, weights: np.ndarray) -> np.ndarray:
    """Weights as (K, N) with K the axis a kernel sums over."""
    if node.op_type == "Conv":
        return weights.reshape(weights.shape[0], -1).T  # (Cout, Cin/g, kh, kw) -> (Cin/g * kh * kw, Cout)
    if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
        return weights.T
    return weights.reshape(-1, weights.shape[-1])


def worst_pair_sum(columns: np.ndarray) -> int:
    """Largest |a0 w0 + a1 w1| over u8 activations a and any two weights of one column (whatever pairs the
    kernel's packing forms): U8_MAX times the sum of the column's two largest same-signed magnitudes."""
    w = np.asarray(columns, dtype=np.int64)
    if w.shape[0] < 2:
        return int(U8_MAX * np.abs(w).max(initial=0))
    positive = -np.sort(-np.clip(w, 0, None), axis=0)[:2].sum(axis=0)
    negative = -np.sort(-np.clip(-w, 0, None), axis=0)[:2].sum(axis=0)
    return int(U8_MAX * max(positive.max(initial=0), negative.max(initial=0)))


def saturation_risks(model: onnx.ModelProto) -> list[SaturationRisk]:
    """Every INT8 product of `model` whose int16 pair sums could saturate on x86 without VNNI."""
    risks = []
    for name, (op_type, columns) in integer_weights(model).items():
        worst = worst_pair_sum(columns)
        if worst > INT16_MAX:
            risks.append(SaturationRisk(name, op_type, worst))
    return risks
