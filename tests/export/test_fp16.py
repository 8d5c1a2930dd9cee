"""The mixed-precision graph: which tensors are fp16 and which stay fp32, and inputs that
overflow a naive fp16 conversion (shown to overflow, so the test bites) but not ours.

ONNX Runtime's CPU provider may compute fp16 ops in fp32 internally, so the numbers on
this CPU alone do not prove fp16 safety: the graph's types are asserted too (the same
graph is what TensorRT builds, strongly typed, on a GPU)."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper, shape_inference

from bnwvad.export.fold import fold
from bnwvad.export.graph import build_graph
from bnwvad.runtime.contract import check

F16, F32 = TensorProto.FLOAT16, TensorProto.FLOAT


def naive_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Every float tensor of an fp32 graph made fp16, fp32 kept only at the inputs and
    outputs (what a generic converter with keep_io_types does)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    for i, t in enumerate(g.initializer):
        if t.data_type == F32:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == F32:
                a.i = F16
        n.input[:] = ["features_fp16" if i == "features" else i for i in n.input]
        n.output[:] = [o + "_fp16" if o in ("score", "dfm", "anomaly") else o for o in n.output]
    g.node.insert(0, helper.make_node("Cast", ["features"], ["features_fp16"], to=F16))
    for o in ("score", "dfm", "anomaly"):
        g.node.append(helper.make_node("Cast", [o + "_fp16"], [o], to=F32))
    return m


def _types(proto):
    inferred = shape_inference.infer_shapes(proto, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    return inferred, types


def test_fp16_graph_keeps_in_fp32_what_fp16_cannot_hold(official_fp16):
    proto = onnx.load(str(official_fp16.path))
    graph, types = _types(proto)
    nodes = graph.graph.node
    assert all(types[i.name] == F32 for i in graph.graph.output)
    assert types["features"] == F32

    def of(op):
        return [n for n in nodes if n.op_type == op]
    # Every big matmul (embedding, attention, feed-forward) runs in fp16 ...
    fp16_mm = [n for n in of("MatMul") if types[n.output[0]] == F16]
    assert len(fp16_mm) >= 1 + 2 * 7, [n.name for n in fp16_mm]          # embed + 7 per block
    for n in fp16_mm:
        assert all(types[i] == F16 for i in n.input), n.name
    # ... the normal head, DFM norm, LayerNorm, softmax and residual stream stay fp32.
    head_mm = [n for n in of("MatMul") if n.output[0] not in {m.output[0] for m in fp16_mm}]
    assert head_mm and all(types[n.output[0]] == F32 for n in head_mm)
    assert {n.name.split(".")[0] for n in head_mm} == {"head0", "head1", "out", "column_sums_0"} - {"column_sums_0"} | {
        n.name.split(".")[0] for n in head_mm if n.name.startswith("column_sums")}
    for op in ("LayerNormalization", "Softmax", "ReduceSumSquare", "Sqrt", "Sigmoid"):
        assert of(op), op
        for n in of(op):
            assert types[n.input[0]] == F32 and types[n.output[0]] == F32, (op, n.name)
    residual = [n for n in nodes if ".residual" in n.name]
    assert len(residual) == 4 and all(types[n.output[0]] == F32 for n in residual)
    # The embedding sees rows scaled to max |x| = 1 before the fp16 cast.
    scaled = [n for n in nodes if n.name.startswith("rows_scaled")]
    assert scaled and types[scaled[0].output[0]] == F32
    # fp16 weights: half the bytes of the fp32 export.
    assert sum(t.data_type == F16 for t in proto.graph.initializer) >= 1 + 2 * 7


def _anomalous(t=32, burst=True, seed=0):
    """Features whose sum of squared z passes 65504 though every value fits in fp16 (x 40),
    plus, with `burst`, snippets at 1e5 (beyond fp16's range itself)."""
    rng = np.random.default_rng(seed)
    x = (rng.random((1, 2, t, 1024), dtype=np.float32) * 40).astype(np.float32)
    if burst:
        x[:, :, t - 8:t - 4] *= 2.5e3
    return x


def _torch(model, x):
    with torch.no_grad():
        return [o.numpy() for o in model(torch.from_numpy(x))]


def test_naive_fp16_overflows_where_ours_does_not(official_model, official_fp16):
    """True fp16 arithmetic (onnx.reference evaluates every op in its tensors' dtypes): the
    naive conversion turns sum z^2 > 65504 into inf; ours stays within onnx_fp16."""
    from onnx.reference import ReferenceEvaluator

    x = _anomalous(t=12, burst=False)
    ref = _torch(official_model, x)
    assert (ref[1] ** 2 > 4 * 65504).all()          # DFM^2 >= sum over layers of ||z_l||^2 / 2
    assert np.abs(x).max() < 65504
    feeds = {"features": x, "lengths": np.array([12], np.int64)}
    with np.errstate(over="ignore", invalid="ignore"):
        bad = ReferenceEvaluator(naive_fp16(build_graph(fold(official_model)))).run(None, feeds)
        ours = ReferenceEvaluator(onnx.load(str(official_fp16.path))).run(None, feeds)
    assert not np.isfinite(bad[1]).all(), "the naive conversion did not overflow: the test would not bite"
    for name, o, r in zip(("score", "dfm", "anomaly"), ours, ref):
        assert np.isfinite(o).all(), name
        err, ok = check("onnx_fp16", o, r)
        assert ok, (name, err)


def test_feature_burst_beyond_fp16_range_in_onnx_runtime(official_model, official_fp16, session):
    """Features at 1e5 overflow a naive graph's input cast even in ONNX Runtime (run with its
    optimisations off, which otherwise drop the lossy fp32->fp16->fp32 casts); ours rescales
    each row before its fp16 matmul."""
    import onnxruntime as ort

    x = _anomalous()
    feeds = {"features": x, "lengths": np.array([32], np.int64)}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    naive = ort.InferenceSession(naive_fp16(build_graph(fold(official_model))).SerializeToString(), so,
                                 providers=["CPUExecutionProvider"])
    assert not np.isfinite(naive.run(None, feeds)[1]).all()
    ref = _torch(official_model, x)
    for sess in (session(official_fp16.path),
                 ort.InferenceSession(str(official_fp16.path), so, providers=["CPUExecutionProvider"])):
        for name, o, r in zip(("score", "dfm", "anomaly"), sess.run(None, feeds), ref):
            assert np.isfinite(o).all(), name
            err, ok = check("onnx_fp16", o, r)
            assert ok, (name, err)


@pytest.mark.parametrize("seed", [0, 1])
def test_fp16_random_inputs_within_tolerance(official_model, official_fp16, session, seed):
    rng = np.random.default_rng(seed)
    x = (rng.random((2, 5, 50, 1024), dtype=np.float32) * 2).astype(np.float32)
    lengths = np.array([50, 31], np.int64)
    ours = session(official_fp16.path).run(None, {"features": x, "lengths": lengths})
    with torch.no_grad():
        ref = official_model(torch.from_numpy(x), torch.from_numpy(lengths))
    for name, o, r in zip(("score", "dfm", "anomaly"), ours, ref):
        for i, n in enumerate(lengths):
            err, ok = check("onnx_fp16", o[i, :n], r.numpy()[i, :n])
            assert ok, (name, i, err)
