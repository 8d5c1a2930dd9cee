"""Dynamic int8 weight quantisation of the fp32 graph (onnxruntime.quantization).

Only the matmuls with a constant weight are quantised (weights int8 per output channel,
activations quantised per call); the attention's activation-activation matmuls, the
softmax, LayerNorm and the normal head stay fp32. The head is kept fp32 because the DFM
is a norm of its output: its error would be the DFM's error.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx


class QuantizationError(RuntimeError):
    pass


def weight_matmuls(proto: onnx.ModelProto, exclude_prefixes=("head", "out")) -> list[str]:
    """Names of the MatMul nodes whose second input is an initialiser (a weight)."""
    inits = {i.name for i in proto.graph.initializer}
    return [n.name for n in proto.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits
            and not any(i.startswith(exclude_prefixes) for i in n.input[1:2])]


def quantize_int8(proto: onnx.ModelProto, *, per_channel: bool = True) -> onnx.ModelProto:
    """The dynamically quantised version of an fp32 bnwvad graph (metadata not copied)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:   # pragma: no cover - onnxruntime is a dependency of export
        raise QuantizationError(f"int8 export needs onnxruntime.quantization: {e}") from None
    nodes = weight_matmuls(proto)
    if not nodes:
        raise QuantizationError("no weight matmul found to quantise")
    with tempfile.TemporaryDirectory(prefix="bnwvad-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, src)
        quantize_dynamic(src, dst, nodes_to_quantize=nodes, per_channel=per_channel,
                         weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
        out = onnx.load(dst)
    return out


__all__ = ["QuantizationError", "quantize_int8", "weight_matmuls"]
