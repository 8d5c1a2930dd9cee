"""The ONNX graph of a folded model, built node by node with onnx.helper.

Why build it by hand rather than trace `DeployModel` with torch.onnx.export:
- precision is a per-tensor decision here: the fp16 graph keeps the residual stream,
  LayerNorm, the softmax, the normal head and the DFM norm in fp32, rescales the input
  rows before the fp16 embedding matmul, and leaves every other matmul in fp16. A
  traced graph would need the same decisions re-applied node by node afterwards;
- dynamic N, C, T with the `lengths` masking come out as a handful of shape ops, with
  no tracer guards or specialised constants, and every node has a readable name;
- it is plain standard ONNX (opset >= 17), so TensorRT parses the same file ONNX
  Runtime runs, and exporting takes milliseconds.
The cost is a second description of the model; it is verified against the unoptimised
PyTorch model on every export (`bnwvad.export.verify`).

Shapes: N videos, C crops, T snippets, D features, B = N * C rows, E = embed dim,
h heads of dh, F hidden features of the feed-forward.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bnwvad.runtime.contract import OUTPUTS

from .fold import COSINE_EPS, DeployModel

F32, F16, I64, BOOL = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.BOOL
MIN_OPSET, MAX_OPSET = 17, 21
# Smallest row max the fp16 embedding divides by (a normal fp32 number): an all-zero row
# (padding) then scales to zeros instead of 0/0.
_ROW_SCALE_FLOOR = 2.0 ** -100


# Variants of the graph's form, for measurement (bench/export_speed.py); the defaults are
# the forms measured fastest on ONNX Runtime's CPU provider, all standard ONNX.
GRAPH_OPTIONS = {
    "qkv": "fused (default): one (E, 4E) matmul then slices | separate: four (E, E) matmuls",
    "attention": "standard (default): MatMul/Softmax/MatMul | mha: com.microsoft.MultiHeadAttention "
                 "(ONNX Runtime only, not TensorRT)",
    "adds": "sum (default): one variadic Sum per residual | chain: pairwise Adds",
    "mask": "where (default): Where(mask, features, 0) | mul: features * mask (lets inf/NaN padding leak)",
    "row_scale": "false (default for fp32) | true: scale rows to max |x| = 1 around the embedding matmul "
                 "(always on for fp16; on for int8)",
}


class GraphError(ValueError):
    """The graph cannot be built as asked (opset, precision, model)."""


class _Builder:
    """Collects nodes and initialisers; every op returns its output name(s)."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, value, dtype) -> str:
        """A small shared constant (scalars, shape vectors)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(self.name("const"), arr)
        return self._consts[key]

    def op(self, op_type: str, inputs, hint: str | None = None, n_out: int = 1,
           domain: str = "", outputs=None, **attrs):
        base = self.name(hint or op_type.lower())
        outs = list(outputs) if outputs else ([base] if n_out == 1 else [f"{base}_{i}" for i in range(n_out)])
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=base, domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    # Ops whose signature changed across the supported opsets.
    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int, hint: str | None = None) -> str:
        if self.opset >= 18 or op_type == "ReduceSum":
            return self.op(op_type, [x, self.const(axes, np.int64)], hint, keepdims=keepdims)
        return self.op(op_type, [x], hint, axes=axes, keepdims=keepdims)

    def cast(self, x: str, to: int, hint: str | None = None) -> str:
        return self.op("Cast", [x], hint or "cast", to=to)


class _Emitter:
    """Emits the model; `half` selects the mixed-precision form."""

    def __init__(self, model: DeployModel, opset: int, half: bool, options: dict | None = None):
        self.m, self.b, self.half = model, _Builder(opset), half
        self.opt = dict(options or {})
        self.cfg = model.config
        self.wt = F16 if half else F32            # the type of the matmul islands
        self.np_wt = np.float16 if half else np.float32

    def w(self, name: str, t, island: bool = True) -> str:
        """A weight initialiser: fp16 inside the matmul islands of the half graph."""
        a = t.detach().cpu().numpy().astype(np.float32)
        if island and self.half:
            if np.abs(a).max() > 65504:
                raise GraphError(f"weight {name} has |w| up to {np.abs(a).max():.3g}, beyond fp16's 65504")
            a = a.astype(np.float16)
        return self.b.init(name, a)

    def to_island(self, x: str) -> str:
        return self.b.cast(x, F16, "to_fp16") if self.half else x

    def from_island(self, x: str) -> str:
        return self.b.cast(x, F32, "to_fp32") if self.half else x

    # -- the graph -------------------------------------------------------------------
    def build(self) -> onnx.GraphProto:
        b, cfg = self.b, self.cfg
        e, d = cfg.embed_dim, cfg.feature_dim
        i64 = np.int64
        shape = b.op("Shape", ["features"], "shape")                       # [N, C, T, D]
        nct = b.op("Slice", [shape, b.const([0], i64), b.const([3], i64)], "nct")
        t_vec = b.op("Slice", [shape, b.const([2], i64), b.const([3], i64)], "t_vec")
        t_scalar = b.op("Squeeze", [t_vec, b.const([0], i64)], "t")
        td = b.op("Slice", [shape, b.const([2], i64), b.const([4], i64)], "td")

        # mask (N, T): snippet j of video n is real when j < lengths[n].
        pos = b.op("Range", [b.const(0, i64), t_scalar, b.const(1, i64)], "positions")   # (T,)
        mask = b.op("Less", [b.op("Unsqueeze", [pos, b.const([0], i64)]),
                             b.op("Unsqueeze", ["lengths", b.const([1], i64)])], "mask")
        # Padded rows are zeroed (Where, not Mul, so inf/NaN garbage there cannot leak):
        # the temporal conv then sees the zeros its own padding gives an unpadded video.
        mask4 = b.op("Unsqueeze", [mask, b.const([1, 3], i64)], "mask_nc1t1")       # (N, 1, T, 1)
        if self.opt.get("mask") == "mul":
            x = b.op("Mul", ["features", b.cast(mask4, F32)], "features_masked")
        else:
            x = b.op("Where", [mask4, "features", b.const(0.0, np.float32)], "features_masked")
        bshape = b.op("Concat", [b.const([-1], i64), td], "btd_shape", axis=0)
        x = b.op("Reshape", [x, bshape], "rows")                                       # (B, T, D)

        x = self.embedding(x, e)                                                       # (B, T, E)

        # Additive key mask (B, 1, 1, T): 0 for real keys, -inf for padded ones.
        key_bias = b.op("Where", [mask, b.const(0.0, np.float32), b.const(-np.inf, np.float32)], "key_bias")
        crops = b.op("Slice", [shape, b.const([1], i64), b.const([2], i64)], "c_vec")
        # (N, T) -> (N, 1, 1, 1, T) -> expand over crops (N, C, 1, 1, T) -> (B, 1, 1, T).
        kb_shape = b.op("Concat", [b.const([1], i64), crops, b.const([1, 1], i64), t_vec], "kb_shape", axis=0)
        key_bias = b.op("Expand", [b.op("Unsqueeze", [key_bias, b.const([1, 2, 3], i64)]), kb_shape])
        b11t = b.op("Concat", [b.const([-1, 1, 1], i64), t_vec], "b11t_shape", axis=0)
        key_bias = b.op("Reshape", [key_bias, b11t], "key_bias_b11t")
        if self.opt.get("attention") == "mha":
            km = b.op("Expand", [b.op("Unsqueeze", [b.cast(mask, TensorProto.INT32), b.const([1], i64)]),
                                 b.op("Concat", [b.const([1], i64), crops, b.const([1], i64)], axis=0)])
            key_bias = b.op("Reshape", [km, b.op("Concat", [b.const([-1], i64), t_vec], axis=0)], "key_mask_bt")
        g = self.temporal_weights(pos, mask)                                           # (N, 1, T, T)
        u_shape = b.op("Concat", [nct, b.const([e], i64)], "ncte_shape", axis=0)
        bte = b.op("Concat", [b.const([-1], i64), t_vec, b.const([e], i64)], "bte_shape", axis=0)
        for i, blk in enumerate(self.m.blocks):
            x = self.block(i, blk, x, key_bias, g, u_shape, bte)

        score, dfm, anomaly = self.head(x)                                             # (B, T) each
        for name, val in zip(OUTPUTS, (score, dfm, anomaly)):
            per_crop = b.op("Reshape", [val, nct], f"{name}_per_crop")                 # (N, C, T)
            b.nodes.append(helper.make_node(
                "ReduceMean", [per_crop] + ([b.const([1], i64)] if b.opset >= 18 else []), [name],
                name=f"{name}_crop_mean", keepdims=0, **({} if b.opset >= 18 else {"axes": [1]})))

        inputs = [helper.make_tensor_value_info("features", F32, ["N", "C", "T", d]),
                  helper.make_tensor_value_info("lengths", I64, ["N"])]
        outputs = [helper.make_tensor_value_info(n, F32, ["N", "T"]) for n in OUTPUTS]
        return helper.make_graph(b.nodes, "bnwvad", inputs, outputs, b.inits)

    def embedding(self, x: str, e: int) -> str:
        """Conv1d(D -> E, k=3, pad=1) + ReLU as one (D, 3E) matmul and a shift-add over T."""
        b, i64 = self.b, np.int64
        w = self.w("embed.w_cat", self.m.embed_w)                                      # (D, 3E)
        if self.half or self.opt.get("row_scale"):
            # Each row of x is scaled by its max |x| (fp32) before the fp16 cast, and the
            # matmul result scaled back in fp32: exact for a per-row linear map, and no
            # feature value, however large, overflows fp16's 65504. The shift-add below
            # mixes rows only after the scale is undone.
            amax = b.reduce("ReduceMax", b.op("Abs", [x]), [-1], 1, "row_absmax")      # (B, T, 1)
            amax = b.op("Max", [amax, b.const(_ROW_SCALE_FLOOR, np.float32)], "row_scale")
            xs = self.to_island(b.op("Div", [x, amax], "rows_scaled"))
            y = b.op("MatMul", [xs, w], "embed_matmul")                                # (B, T, 3E)
            y = b.op("Mul", [self.from_island(y), amax], "embed_unscaled")
        else:
            y = b.op("MatMul", [x, w], "embed_matmul")                                 # (B, T, 3E)
        big = np.iinfo(np.int64).max
        # out[t] = Y0[t-1] + Y1[t] + Y2[t+1]: the zero rows of the conv's own padding.
        y0 = b.op("Slice", [y, b.const([0, 0], i64), b.const([-1, e], i64), b.const([1, 2], i64)], "y0")
        y0 = b.op("Pad", [y0, b.const([0, 1, 0, 0, 0, 0], i64)], "y0_shifted")
        y1 = b.op("Slice", [y, b.const([e], i64), b.const([2 * e], i64), b.const([2], i64)], "y1")
        y2 = b.op("Slice", [y, b.const([1, 2 * e], i64), b.const([big, 3 * e], i64), b.const([1, 2], i64)], "y2")
        y2 = b.op("Pad", [y2, b.const([0, 0, 0, 0, 1, 0], i64)], "y2_shifted")
        out = self.add_all([y0, y1, y2, self.w("embed.b", self.m.embed_b, island=False)], "embed_sum")
        return b.op("Relu", [out], "embedded")

    def temporal_weights(self, pos: str, mask: str) -> str:
        """G (N, 1, T, T) as `fold.temporal_weights`: exp(-|i - j| / e) / s[j], 0 past the length."""
        b = self.b
        p = b.cast(pos, F32, "pos_f")
        diff = b.op("Sub", [b.op("Unsqueeze", [p, b.const([0], np.int64)]),
                            b.op("Unsqueeze", [p, b.const([1], np.int64)])])          # (T, T)
        e32 = np.float32(np.exp(np.float32(1.0)))
        kern = b.op("Exp", [b.op("Div", [b.op("Neg", [b.op("Abs", [diff])]), b.const(e32, np.float32)])],
                    "temporal_kernel")                                                 # (T, T)
        s = b.op("MatMul", [b.cast(mask, F32, "mask_f"), kern], "column_sums")        # (N, T)
        s = b.op("Unsqueeze", [s, b.const([1], np.int64)])                             # (N, 1, T)
        g = b.op("Div", [kern, s])                                                     # (N, T, T)
        g = b.op("Where", [b.op("Unsqueeze", [mask, b.const([1], np.int64)]), g, b.const(0.0, np.float32)])
        g = b.op("Unsqueeze", [g, b.const([1], np.int64)], "temporal_weights")         # (N, 1, T, T)
        return self.to_island(g)

    def layer_norm(self, x: str, w, bias, eps: float, hint: str) -> str:
        b = self.b
        return b.op("LayerNormalization", [x, self.w(f"{hint}.w", w, island=False),
                                           self.w(f"{hint}.b", bias, island=False)],
                    hint, axis=-1, epsilon=eps)

    def block(self, i: int, blk, x: str, key_bias: str, g: str, u_shape: str, bte: str) -> str:
        b, i64 = self.b, np.int64
        e, inner, h, dh = blk.embed, blk.inner, blk.heads, blk.head_dim
        p = f"block{i}"
        y = self.to_island(self.layer_norm(x, blk.ln1_w, blk.ln1_b, blk.ln_eps, f"{p}.attn_norm"))
        opt = self.opt
        if opt.get("qkv") == "separate":
            parts = [b.op("MatMul", [y, self.w(f"{p}.w_{n}", blk.w_qkvu[:, k * inner:(k + 1) * inner if n != "u" else None])],
                          f"{p}.{n}") for k, n in enumerate("qkvu")]
            q_, k_, v_, u = parts
        else:
            qkvu = b.op("MatMul", [y, self.w(f"{p}.w_qkvu", blk.w_qkvu)], f"{p}.qkvu")  # (B, T, 3 inner + E)
            def sl(k, hint, width):
                return b.op("Slice", [qkvu, b.const([k * inner], i64), b.const([k * inner + width], i64),
                                      b.const([2], i64)], hint)
            q_, k_, v_, u = sl(0, f"{p}.q", inner), sl(1, f"{p}.k", inner), sl(2, f"{p}.v", inner), sl(3, f"{p}.u", e)

        if opt.get("attention") == "mha":
            o1 = b.op("MultiHeadAttention", [q_, k_, v_, "", key_bias], f"{p}.mha", domain="com.microsoft",
                      num_heads=h, scale=1.0)
        else:
            def heads(part, perm, hint):
                part = b.op("Reshape", [part, b.const([0, 0, h, dh], i64)])               # (B, T, h, dh)
                return b.op("Transpose", [part], f"{hint}_heads", perm=perm)
            q = heads(q_, [0, 2, 1, 3], f"{p}.q")                                           # (B, h, T, dh)
            k = heads(k_, [0, 2, 3, 1], f"{p}.k")                                           # (B, h, dh, T)
            v = heads(v_, [0, 2, 1, 3], f"{p}.v")                                           # (B, h, T, dh)
            dots = b.op("MatMul", [q, k], f"{p}.dots")                                     # (B, h, T, T)
            dots = b.op("Add", [self.from_island(dots), key_bias], f"{p}.dots_masked")
            attn = self.to_island(b.op("Softmax", [dots], f"{p}.softmax", axis=-1))
            o1 = b.op("MatMul", [attn, v], f"{p}.attn_v")                                  # (B, h, T, dh)
            o1 = b.op("Transpose", [o1], perm=[0, 2, 1, 3])
            o1 = b.op("Reshape", [o1, b.const([0, 0, inner], i64)])                        # (B, T, inner)
        o1 = b.op("MatMul", [o1, self.w(f"{p}.w_o", blk.w_o)], f"{p}.proj")            # (B, T, E)
        # Temporal branch: G (N, 1, T, T) @ u (N, C, T, E), already projected.
        o2 = b.op("MatMul", [g, b.op("Reshape", [u, u_shape])], f"{p}.temporal")
        o2 = b.op("Reshape", [o2, bte])                                                # (B, T, E)
        if self.half:
            att = self.add_all([o1, o2, self.w(f"{p}.b_o", blk.b_o)], f"{p}.attn_out")
            x = b.op("Add", [x, self.from_island(att)], f"{p}.residual1")
        else:      # one pass over (B, T, E) instead of three
            x = self.add_all([x, o1, o2, self.w(f"{p}.b_o", blk.b_o)], f"{p}.residual1")

        y = self.to_island(self.layer_norm(x, blk.ln2_w, blk.ln2_b, blk.ln2_eps, f"{p}.ff_norm"))
        f = b.op("Add", [b.op("MatMul", [y, self.w(f"{p}.fc1_w", blk.fc1_w)], f"{p}.fc1_matmul"),
                         self.w(f"{p}.fc1_b", blk.fc1_b)], f"{p}.fc1")
        f = self.gelu(f, p)
        f = b.op("MatMul", [f, self.w(f"{p}.fc2_w", blk.fc2_w)], f"{p}.fc2_matmul")
        if self.half:
            f = b.op("Add", [f, self.w(f"{p}.fc2_b", blk.fc2_b)], f"{p}.fc2")
            return b.op("Add", [x, self.from_island(f)], f"{p}.residual2")
        return self.add_all([x, f, self.w(f"{p}.fc2_b", blk.fc2_b)], f"{p}.residual2")

    def add_all(self, terms: list[str], hint: str) -> str:
        """The sum of several same-typed tensors: one variadic Sum (one pass over memory)
        unless the graph option adds="chain" asks for pairwise Adds."""
        if self.opt.get("adds") == "chain":
            out = terms[0]
            for i, t in enumerate(terms[1:], 1):
                out = self.b.op("Add", [out, t], hint if i == len(terms) - 1 else None)
            return out
        return self.b.op("Sum", terms, hint)

    def gelu(self, x: str, p: str) -> str:
        """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), in the form ORT fuses into one kernel."""
        b = self.b
        c = (lambda v: b.const(v, self.np_wt))
        t = b.op("Erf", [b.op("Div", [x, c(math.sqrt(2.0))])])
        return b.op("Mul", [b.op("Mul", [x, b.op("Add", [t, c(1.0)])]), c(0.5)], f"{p}.gelu")

    def head(self, x: str):
        """Folded normal head, all fp32: z_l, DFM_l = ||z_l||, BN(h_l) = z_l * scale + shift.

        Kept fp32 in the half graph too: its input is the un-normalised residual stream
        (large on anomalous inputs) and sum(z^2) passes fp16's 65504 there; it is < 1%
        of the work.
        """
        b, cfg = self.b, self.cfg
        a, dfm = x, None
        for i, layer in enumerate(self.m.head_layers):
            p = f"head{i}"
            z = b.op("Add", [b.op("MatMul", [a, self.w(f"{p}.w", layer.weight, island=False)], f"{p}.matmul"),
                             self.w(f"{p}.b", layer.bias, island=False)], f"{p}.z")    # (B, T, C_l)
            d = self.divergence(z, layer, p)
            dfm = d if dfm is None else b.op("Add", [dfm, d])
            bn = b.op("Add", [b.op("Mul", [z, self.w(f"{p}.scale", layer.scale, island=False)]),
                              self.w(f"{p}.shift", layer.shift, island=False)], f"{p}.bn")
            a = b.op("Relu", [bn], f"{p}.act")
        logit = b.op("Add", [b.op("MatMul", [a, self.w("out.w", self.m.out_w, island=False)], "out.matmul"),
                             self.w("out.b", self.m.out_b, island=False)])            # (B, T, 1)
        score = b.op("Sigmoid", [b.op("Squeeze", [logit, b.const([-1], np.int64)])], "score_rows")
        dfm = b.op("Identity", [dfm], "dfm_rows")
        anomaly = {"product": lambda: b.op("Mul", [score, dfm], "anomaly_rows"),
                   "classifier": lambda: score, "dfm": lambda: dfm}[cfg.score]()
        return score, dfm, anomaly

    def divergence(self, z: str, layer, p: str) -> str:
        b = self.b
        norm = b.op("Sqrt", [b.reduce("ReduceSumSquare", z, [-1], 0, f"{p}.sum_z2")], f"{p}.norm")
        if self.cfg.distance != "cosine":
            return norm                                                                # (B, T)
        mu = layer.mean.detach().cpu().numpy().astype(np.float32)
        dot = b.op("Squeeze", [b.op("MatMul", [z, b.init(f"{p}.mean", mu[:, None].copy())], f"{p}.dot_mean"),
                               b.const([-1], np.int64)])
        den = b.op("Mul", [b.op("Max", [norm, b.const(COSINE_EPS, np.float32)]),
                           b.const(max(float(np.linalg.norm(mu.astype(np.float64))), COSINE_EPS), np.float32)])
        return b.op("Sub", [b.const(1.0, np.float32), b.op("Div", [dot, den])], f"{p}.cosine")


def build_graph(model: DeployModel, *, opset: int = MIN_OPSET, precision: str = "fp32",
                options: dict | None = None) -> onnx.ModelProto:
    """The ONNX model (no metadata) of a folded model; precision 'fp32' or 'fp16'."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise GraphError(f"opset {opset} is not supported; expected {MIN_OPSET}..{MAX_OPSET} "
                         f"(LayerNormalization needs >= 17)")
    if precision not in ("fp32", "fp16"):
        raise GraphError(f"precision {precision!r}: build_graph makes 'fp32' or 'fp16' "
                         f"(int8 is quantised from the fp32 graph)")
    unknown = sorted(set(options or {}) - set(GRAPH_OPTIONS))
    if unknown:
        raise GraphError(f"unknown graph options {unknown}; known: {sorted(GRAPH_OPTIONS)}")
    graph = _Emitter(model, opset, precision == "fp16", options).build()
    imports = [helper.make_opsetid("", opset)]
    if any(n.domain == "com.microsoft" for n in graph.node):      # only the opt-in "mha" form
        imports.append(helper.make_opsetid("com.microsoft", 1))
    proto = helper.make_model(graph, opset_imports=imports,
                              producer_name="bnwvad.export")
    # The IR version this opset was released with, so older runtimes can load the file.
    proto.ir_version = {17: 8, 18: 8, 19: 9, 20: 9, 21: 10}[opset]
    return proto


__all__ = ["GRAPH_OPTIONS", "GraphError", "MAX_OPSET", "MIN_OPSET", "build_graph"]
