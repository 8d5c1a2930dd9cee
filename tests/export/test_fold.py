"""BN folding: a pure function whose deploy model computes the original's outputs."""
import pytest
import torch

from bnwvad.export import FoldError, build_graph, fold
from bnwvad.runtime.contract import check


def _inputs(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 2, 11, d, generator=g) * 2
    lengths = torch.tensor([11, 5, 1])
    x[1, :, 5:] = 50.0           # garbage past the lengths
    x[2, :, 1:] = -7.0
    return x, lengths


def test_fold_leaves_the_original_untouched(tiny):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    deploy = fold(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert grads == {k: p.requires_grad for k, p in model.named_parameters()}
    assert not model.training and not deploy.training
    # Nothing shared: writing into the deploy model does not reach the original.
    with torch.no_grad():
        for p in deploy.parameters():
            p.add_(1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k


@pytest.mark.parametrize("distance", ["mahalanobis", "euclidean", "cosine"])
@pytest.mark.parametrize("score", ["product", "classifier", "dfm"])
def test_folded_model_computes_the_original(tiny, distance, score):
    model = tiny(distance=distance, score=score)
    deploy = fold(model)
    x, lengths = _inputs(model.config.feature_dim)
    with torch.no_grad():
        ref, ours = model(x, lengths), deploy(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        for name, o, r in zip(("score", "dfm", "anomaly"), ours, ref):
            err, ok = check("fold", o[i, :n], r[i, :n])
            assert ok, (distance, score, name, i, err)


def test_folded_hidden_layer_is_the_standardised_feature(tiny):
    """One matmul gives z_l = (h_l - mu_l) / sqrt(var_l); ||z_l|| is DFM_l and
    z_l * scale + shift is BN(h_l)."""
    model = tiny()
    deploy = fold(model)
    x = torch.rand(4, 7, model.config.embed_dim)
    with torch.no_grad():
        hs, _ = model.head(x)
        a = x
        for h, bn, layer in zip(hs, model.head.bns, deploy.head_layers):
            z = a @ layer.weight + layer.bias
            want = (h - bn.running_mean) / torch.sqrt(bn.running_var)
            torch.testing.assert_close(z, want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(z * layer.scale + layer.shift, bn(h.transpose(1, 2)).transpose(1, 2),
                                       rtol=1e-5, atol=1e-5)
            a = torch.relu(bn(h.transpose(1, 2)).transpose(1, 2))


def test_zero_variance_is_refused_with_the_channel(tiny):
    model = tiny()
    with torch.no_grad():
        model.head.bns[1].running_var[2] = 0.0
    with pytest.raises(FoldError, match=r"head layer 2.*channels \[2\].*infinite"):
        fold(model)


def test_fold_rejects_other_objects():
    with pytest.raises(TypeError, match="BNWVAD"):
        fold(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graph_has_no_batchnorm_node(tiny, precision):
    proto = build_graph(fold(tiny()), precision=precision)
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops
    assert "MatMul" in ops and "LayerNormalization" in ops
