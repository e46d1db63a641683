"""Export a torch module to an ONNX graph that onnxruntime and TensorRT 10 both accept.

Choices: opset 17 (LayerNorm as one op; TensorRT 10 supports it), the TorchScript-based exporter
(`dynamo=False`: it constant-folds buffers such as the text prior and codebooks into initializers and
needs no onnxscript at export time), a dynamic batch axis only (spatial sizes stay static so TensorRT can
build with one explicit optimisation profile), and an `onnx.checker` pass before the file is moved into
place so no half-written graph is ever left behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from npgmf_edge.fileio import atomic_write

ONNX_OPSET = 17


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_names: Sequence[str],
    dynamic_batch: bool = True,
    opset: int = ONNX_OPSET,
) -> Path:
    """Write `module` (eval mode, CPU) traced on `example` to `path` atomically; returns `path`."""
    module = module.eval()
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in (input_name, *output_names)}

    def write(tmp: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                input_names=[input_name],
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)

    return atomic_write(path, write)


def graph_op_types(path: Path) -> set[str]:
    """The set of operator types in an ONNX graph (to check for ops TensorRT lacks)."""
    return {node.op_type for node in onnx.load(str(path)).graph.node}
