"""Dynamic 8-bit weight quantisation of the fp32 graph (onnxruntime.quantization).

Only the matmuls with a constant weight are quantised (weights 8-bit per output channel,
activations quantised per call); the attention's activation-activation matmuls, the
softmax, LayerNorm and the normal head stay fp32. The head is kept fp32 because the DFM
is a norm of its output: its error would be the DFM's error.

The weights are *unsigned* 8-bit (asymmetric, a zero point per output channel), not int8.
Dynamic quantisation always gives MatMulInteger uint8 activations (0..255). With int8
weights (u8 x s8), ONNX Runtime's MLAS kernel on x86 CPUs without VNNI (AVX2, AVX-512
without VNNI) multiplies with `vpmaddubsw`, which adds each pair of u8*s8 products into a
*saturating int16*: with full-range weights a pair reaches 2 * 255 * 127 = 64770 > 32767
and is clipped. The same .onnx file is then exact on a VNNI CPU and silently wrong on an
AVX2 one (tiny test model: DFM off by 15%, a score by 0.5; published weights: 5.9e-2
instead of 4.5e-3). u8 x u8 products have no byte-pair instruction, every CPU's kernel
widens them to int16 first, so the u8 graph is exact everywhere, and per-channel min/max
ranges use all 256 levels (measured on the published weights: anomaly 3.2e-3, DFM 2.2e-3
against the published outputs). ONNX Runtime's `reduce_range` (7-bit int8 weights) also
avoids most saturation but loses a bit: DFM 7.6e-3. `check_exact_everywhere` guards the
result. (A session option, `session.x64quantprecision=1`, would fix u8 x s8 at run time,
but only in sessions that set it; the file itself must be right for any consumer.)
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# Largest |int8 weight - zero point| for which u8 x s8 pair sums fit int16 (2 * 255 * 64 = 32640).
MAX_ABS_INT8_WEIGHT = 64
# Where the integer matmuls keep B and B's zero point (input indices).
_INTEGER_MATMULS = {"MatMulInteger": (1, 3), "DynamicQuantizeMatMul": (1, 3), "MatMulIntegerToFloat": (1, 5)}


class QuantizationError(RuntimeError):
    pass


def weight_matmuls(proto: onnx.ModelProto, exclude_prefixes=("head", "out")) -> list[str]:
    """Names of the MatMul nodes whose second input is an initialiser (a weight)."""
    inits = {i.name for i in proto.graph.initializer}
    return [n.name for n in proto.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits
            and not any(i.startswith(exclude_prefixes) for i in n.input[1:2])]


def check_exact_everywhere(proto: onnx.ModelProto) -> int:
    """Raise QuantizationError if an integer matmul could saturate on a CPU without VNNI: its
    constant weight must be uint8, or int8 within +-MAX_ABS_INT8_WEIGHT of its zero point.
    Returns the number of integer matmuls checked."""
    inits = {i.name: i for i in proto.graph.initializer}
    checked = 0
    for node in proto.graph.node:
        if node.op_type not in _INTEGER_MATMULS:
            continue
        b_idx, zp_idx = _INTEGER_MATMULS[node.op_type]
        b = inits.get(node.input[b_idx])
        if b is None:
            raise QuantizationError(f"{node.name}: integer matmul without a constant weight")
        checked += 1
        if b.data_type == onnx.TensorProto.UINT8:
            continue
        w = numpy_helper.to_array(b).astype(np.int32)
        zp_name = node.input[zp_idx] if len(node.input) > zp_idx else ""
        zp = numpy_helper.to_array(inits[zp_name]).astype(np.int32) if zp_name in inits else 0
        peak = int(np.abs(w - zp).max()) if w.size else 0
        if peak > MAX_ABS_INT8_WEIGHT:
            raise QuantizationError(
                f"{node.name}: int8 weight {b.name} reaches |q| = {peak} > {MAX_ABS_INT8_WEIGHT}; u8 x s8 "
                f"pair sums saturate int16 on x86 CPUs without VNNI (quantise the weights as uint8)")
    return checked


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
                         weight_type=QuantType.QUInt8, extra_options={"MatMulConstBOnly": True})
        out = onnx.load(dst)
    n = check_exact_everywhere(out)
    if n != len(nodes):
        raise QuantizationError(f"onnxruntime.quantization made {n} integer matmuls of the {len(nodes)} asked for")
    return out


__all__ = ["MAX_ABS_INT8_WEIGHT", "QuantizationError", "check_exact_everywhere", "quantize_int8", "weight_matmuls"]
