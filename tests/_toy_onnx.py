"""A tiny ONNX graph that follows the bnwvad export contract, for the runtime's tests.

Built with onnx.helper in milliseconds (D = 8, 3 crops): inputs `features` (N, C, T, D) and
`lengths` (N,), outputs score/dfm/anomaly (N, T), dynamic N/C/T, JSON metadata_props. Its
outputs depend on each video's length (a per-video mean over its real snippets), so a
padding or masking mistake shows.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TOY_D = 8
TOY_CROPS = 3


def toy_metadata(**over) -> dict:
    """The exporter's metadata keys (export/metadata.py) for the toy graph."""
    meta = {"format": "bnwvad-onnx", "format_version": 1, "bnwvad_version": "0.1.0",
            "precision": "fp32", "opset": 17, "feature_dim": TOY_D, "crops": TOY_CROPS,
            "frames_per_snippet": 16, "preset": "toy",
            "model_config": {"feature_dim": TOY_D, "heads": 2, "embed_dim": 16, "depth": 1},
            "source": "toy.pt", "source_digest": "sha256:toy", "weights_digest": "sha256:toyw",
            "anomaly": "product"}
    meta.update(over)
    return meta


def build_toy_onnx(path: Path, *, metadata: dict | None = None, seed: int = 0,
                   feature_dim: int = TOY_D) -> Path:
    """score = sigmoid(z), dfm = |z|, anomaly = score * dfm, crop means; z = x.w minus the video's
    mean of x.w over its real snippets. (N, C, T, D), (N,) -> (N, T) x 3."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(feature_dim, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.array(2, np.int64), "i2"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array([3], np.int64), "ax3"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([2], np.int64), "ax2"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "ax12")]
    nodes = [
        helper.make_node("MatMul", ["features", "w"], ["s4"]),                 # (N, C, T, 1)
        helper.make_node("Squeeze", ["s4", "ax3"], ["s"]),                     # (N, C, T)
        helper.make_node("Shape", ["features"], ["shp"]),
        helper.make_node("Gather", ["shp", "i2"], ["T"]),                      # scalar T
        helper.make_node("Range", ["zero", "T", "one"], ["r"]),                # (T,)
        helper.make_node("Unsqueeze", ["lengths", "ax1"], ["len2"]),           # (N, 1)
        helper.make_node("Less", ["r", "len2"], ["mask"]),                     # (N, T)
        helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "ax1"], ["m3"]),               # (N, 1, T)
        helper.make_node("Mul", ["s", "m3"], ["sm"]),
        helper.make_node("ReduceSum", ["sm", "ax2"], ["tot"], keepdims=1),     # (N, C, 1)
        helper.make_node("Cast", ["lengths"], ["lenf1"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["lenf1", "ax12"], ["lenf"]),            # (N, 1, 1)
        helper.make_node("Div", ["tot", "lenf"], ["mean"]),
        helper.make_node("Sub", ["s", "mean"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["sc"]),
        helper.make_node("Abs", ["z"], ["dc"]),
        helper.make_node("Mul", ["sc", "dc"], ["ac"]),
        helper.make_node("ReduceMean", ["sc"], ["score"], axes=[1], keepdims=0),
        helper.make_node("ReduceMean", ["dc"], ["dfm"], axes=[1], keepdims=0),
        helper.make_node("ReduceMean", ["ac"], ["anomaly"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "toy_bnwvad",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", "C", "T", feature_dim]),
         helper.make_tensor_value_info("lengths", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", "T"]) for n in ("score", "dfm", "anomaly")],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (toy_metadata() if metadata is None else metadata).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, json.dumps(v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def toy_reference(video: np.ndarray, seed: int = 0) -> dict:
    """The toy graph in numpy, one video (C, T, D) -> (T,) x 3."""
    w = np.random.default_rng(seed).normal(size=(video.shape[-1], 1)).astype(np.float32)
    s = (video.astype(np.float64) @ w.astype(np.float64))[..., 0]          # (C, T)
    z = s - s.mean(axis=1, keepdims=True)
    sc, dc = 1 / (1 + np.exp(-z)), np.abs(z)
    return {"score": sc.mean(0), "dfm": dc.mean(0), "anomaly": (sc * dc).mean(0)}


