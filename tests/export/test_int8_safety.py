"""No INT8 product of a bundle can saturate on x86 CPUs without VNNI, shown by emulating their kernel.

`vpmaddubsw_dot` transcribes what onnxruntime's AVX2 / AVX-512BW u8 x s8 kernels compute (Intel's
pseudo-code): VPMADDUBSW multiplies u8 by s8 and adds each adjacent pair into a *saturated* int16, VPMADDWD
against ones adds pairs of those into int32, VPADDD accumulates. With VNNI (VPDPBUSD) the sum is exact.
For each weight column of the exported graphs, the activations that push its pair sums furthest (255
where the weight is positive, 0 elsewhere, and the reverse) must give the exact integer. The previous
quantization (8-bit weights) fails this check, the current one (7-bit) passes: both are shown below.
Pure integer arithmetic: the result does not depend on the CPU running the test.
"""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from npgmf_edge.errors import BundleError
from npgmf_edge.export import precision
from npgmf_edge.export.graph_heads import KnnHead
from npgmf_edge.export.int8_safety import SAFE_WEIGHT_MAX, integer_weights, saturation_risks
from npgmf_edge.runtime.manifest import graph_file

INT16_MIN, INT16_MAX = -(2**15), 2**15 - 1


def vpmaddubsw_dot(activations: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(K, N) u8 activations . (K, N) s8 weights per column, as the non-VNNI kernel sums them -> (N,)."""
    a = activations.astype(np.int64)
    w = weights.astype(np.int64)
    pad = (-len(a)) % 4  # the kernel packs K in groups of 4 bytes; padding is zeros
    a = np.pad(a, ((0, pad), (0, 0)))
    w = np.pad(w, ((0, pad), (0, 0)))
    pairs = (a * w).reshape(-1, 2, a.shape[1]).sum(axis=1)  # VPMADDUBSW before saturation
    words = np.clip(pairs, INT16_MIN, INT16_MAX)  # ... and its signed saturation to int16
    dwords = words.reshape(-1, 2, a.shape[1]).sum(axis=1)  # VPMADDWD with ones
    return dwords.sum(axis=0)  # VPADDD accumulation in int32 (no overflow at these sizes)


def columns_that_saturate(weights: np.ndarray) -> int:
    """How many (K, N) weight columns the emulated kernel gets wrong for their worst u8 activations."""
    w = np.asarray(weights, dtype=np.int64)
    wrong = np.zeros(w.shape[1], dtype=bool)
    for worst in (np.where(w > 0, 255, 0), np.where(w < 0, 255, 0)):
        exact = (worst * w).sum(axis=0)
        wrong |= vpmaddubsw_dot(worst, w) != exact
    return int(wrong.sum())


def test_the_emulated_kernel_saturates_where_intel_documents_it() -> None:
    """Hand-computed: 255*127 + 255*127 = 64,770 saturates to 32,767; 255*64 * 2 = 32,640 does not."""
    full = np.array([[255], [255]])
    assert vpmaddubsw_dot(full, np.array([[127], [127]]))[0] == INT16_MAX
    assert vpmaddubsw_dot(full, np.array([[64], [64]]))[0] == 32640
    assert vpmaddubsw_dot(full, np.array([[-64], [-64]]))[0] == -32640
    # Two pairs of 127s: each pair saturates on its own, the int32 sum then holds both clipped words.
    assert vpmaddubsw_dot(np.full((4, 1), 255), np.full((4, 1), 127))[0] == 2 * INT16_MAX
    # Pairs are adjacent elements: (127, -127) cancels before saturation could happen.
    assert vpmaddubsw_dot(full, np.array([[127], [-127]]))[0] == 0


def _quantized_products(model: onnx.ModelProto) -> int:
    """Conv / MatMul / Gemm nodes whose weight comes through a DequantizeLinear, plus MatMulIntegers."""
    producer = {out: node for node in model.graph.node for out in node.output}
    return sum(
        node.op_type == "MatMulInteger"
        or (
            node.op_type in ("Conv", "MatMul", "Gemm")
            and getattr(producer.get(node.input[1]), "op_type", None) == "DequantizeLinear"
        )
        for node in model.graph.node
    )


@pytest.mark.parametrize("bundle", ["graph_bundle", "faiss_bundle"])
def test_every_int8_product_of_an_exported_bundle_is_exact_without_vnni(bundle, request) -> None:
    model = onnx.load(str(request.getfixturevalue(bundle) / graph_file("int8")))
    weights = integer_weights(model)
    assert len(weights) == _quantized_products(model) > 0  # every quantised product is checked
    for name, (_, columns) in weights.items():
        assert np.abs(columns).max() <= SAFE_WEIGHT_MAX, name
        assert columns_that_saturate(columns) == 0, name
    assert saturation_risks(model) == []


def test_the_int8_knn_search_is_exact_without_vnni(int8_search_bundle) -> None:
    model = onnx.load(str(int8_search_bundle / graph_file("fp32")))
    weights = integer_weights(model)
    assert [op for op, _ in weights.values()] == ["MatMulInteger"]
    (columns,) = [c for _, c in weights.values()]
    assert columns.dtype == np.int8 and np.abs(columns).max() == SAFE_WEIGHT_MAX
    assert columns_that_saturate(columns) == 0


def test_8_bit_knn_search_columns_would_saturate_and_7_bit_ones_do_not() -> None:
    coreset = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
    head = KnnHead(coreset, (4, 4), "int8")
    assert columns_that_saturate(head.weights_q.numpy()) == 0
    weights = (-2.0 * (head.bank - head.center)).t()
    eight_bit = torch.round(weights / (weights.abs().max() / 127)).to(torch.int8).numpy()  # the old scale
    assert columns_that_saturate(eight_bit) > 0


@pytest.fixture(scope="module")
def eight_bit_graph(graph_bundle, tiny_run, tmp_path_factory) -> onnx.ModelProto:
    """The bundle's FP32 graph quantised as before this check existed: 8-bit weights (no reduce_range)."""
    from npgmf_edge.export.bundle import _load_pixels
    from npgmf_edge.rundir import read_provenance

    original = precision.quantize_static

    def eight_bit(*args, **kwargs):
        return original(*args, **{**kwargs, "reduce_range": False})

    images = [Path(p) for p in read_provenance(tiny_run[0])["validation_images"][:8]]
    pixels = _load_pixels(images, 128)
    out = tmp_path_factory.mktemp("eight_bit") / "model.int8.onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "quantize_static", eight_bit)
        with pytest.raises(BundleError, match="could saturate on x86 CPUs without VNNI") as refused:
            precision.quantize_int8(graph_bundle / graph_file("fp32"), out, [pixels])
        patch.setattr(precision, "check_no_saturation", lambda model, path: None)
        precision.quantize_int8(graph_bundle / graph_file("fp32"), out, [pixels])
    assert "(|w| <= 64)" in str(refused.value)
    return onnx.load(str(out))


def test_the_previous_8_bit_quantization_saturates_in_the_emulation(eight_bit_graph) -> None:
    weights = integer_weights(eight_bit_graph)
    saturating = {name for name, (_, columns) in weights.items() if columns_that_saturate(columns)}
    assert saturating  # the emulation catches the old quantization ...
    assert {risk.node for risk in saturation_risks(eight_bit_graph)} >= saturating  # ... and so does export
