"""GCN and GAT layers on edge-index tensors against dgl.nn.GraphConv and dgl.nn.GATConv, on the
same DGL block with a self-loop added to every destination (what our layers compute)."""

import dgl
import pytest
import torch
from dgl.nn import GATConv, GraphConv

from distgnn.errors import InputError
from distgnn.trainer.convs import GATLayer, GCNLayer, edge_softmax, with_self_loops
from distgnn.trainer.model import GNN, LayerGraph, ModelConfig, build_model

from test_model import layer_of, random_block


def random_layer(num_src, num_dst, num_edges):
    return LayerGraph(torch.randint(0, num_src, (num_edges,)), torch.randint(0, num_dst, (num_edges,)),
                      num_src, num_dst)


def looped_block(block):
    """The block with edge i -> i for every destination, as DGL sees it."""
    src, dst = with_self_loops(layer_of(block))
    return dgl.create_block((src, dst), num_src_nodes=block.num_src_nodes(), num_dst_nodes=block.num_dst_nodes())


@pytest.mark.parametrize("in_dim,out_dim", [(32, 8), (8, 32)])
def test_gcn_layer_matches_dgl_graphconv(in_dim, out_dim):
    torch.manual_seed(2)
    block = random_block()
    layer = GCNLayer(in_dim, out_dim)
    conv = GraphConv(in_dim, out_dim, norm="both")
    with torch.no_grad():
        layer.bias.copy_(torch.randn(out_dim))
        conv.weight.copy_(layer.weight)
        conv.bias.copy_(layer.bias)
    h = torch.randn(block.num_src_nodes(), in_dim, requires_grad=True)
    ours = layer(layer_of(block), h)
    theirs = conv(looped_block(block), h)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    (g_ours,) = torch.autograd.grad(ours.square().sum(), h)
    (g_theirs,) = torch.autograd.grad(theirs.square().sum(), h)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("heads", [1, 3])
def test_gat_layer_matches_dgl_gatconv(heads):
    torch.manual_seed(3)
    block = random_block()
    layer = GATLayer(16, 5, heads)
    conv = GATConv(16, 5, heads)
    with torch.no_grad():
        layer.bias.copy_(torch.randn(heads * 5))
        conv.fc.weight.copy_(layer.fc.weight)
        conv.attn_l.copy_(layer.attn_src)
        conv.attn_r.copy_(layer.attn_dst)
        conv.bias.copy_(layer.bias)
    h = torch.randn(block.num_src_nodes(), 16, requires_grad=True)
    ours = layer(layer_of(block), h)
    theirs = conv(looped_block(block), h)
    assert ours.shape == (block.num_dst_nodes(), heads, 5)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    (g_ours,) = torch.autograd.grad(ours.square().sum(), h)
    (g_theirs,) = torch.autograd.grad(theirs.square().sum(), h)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-5, rtol=1e-4)


def test_edge_softmax_sums_to_one_per_destination_and_survives_large_scores():
    dst = torch.tensor([0, 0, 1, 1, 1, 2])
    scores = torch.tensor([[1000.0], [999.0], [0.0], [1.0], [2.0], [-50.0]])
    a = edge_softmax(dst, scores, 3)
    assert torch.isfinite(a).all()
    sums = torch.zeros(3, 1).index_add_(0, dst, a)
    torch.testing.assert_close(sums, torch.ones(3, 1))


@pytest.mark.parametrize("kind", ["gcn", "gat"])
def test_stacks_run_under_bf16_autocast_and_stay_close_to_fp32(kind):
    torch.manual_seed(4)
    layers = [random_layer(60, 30, 400), random_layer(30, 12, 200)]
    model = GNN(16, 24, 4, 2, dropout=0.0, model=kind, heads=3).eval()
    x = torch.randn(60, 16)
    exact = model(layers, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(layers, x)
    assert exact.shape == (12, 4) and low.shape == (12, 4)
    torch.testing.assert_close(low.float(), exact, atol=0.1, rtol=0.1)


def test_gat_config_checks_heads_against_hidden():
    with pytest.raises(InputError, match="--hidden 10: must be a multiple of --heads 3"):
        ModelConfig(in_dim=4, hidden=10, num_classes=2, num_layers=2, dropout=0.0, model="gat", heads=3)
    with pytest.raises(InputError, match="--heads 0: must be at least 1"):
        ModelConfig(in_dim=4, hidden=8, num_classes=2, num_layers=2, dropout=0.0, model="gat", heads=0)
    with pytest.raises(InputError, match="--model 'gin'"):
        ModelConfig(in_dim=4, hidden=8, num_classes=2, num_layers=2, dropout=0.0, model="gin")


def test_models_round_trip_through_their_config():
    for kind in ("sage", "gcn", "gat"):
        model = GNN(8, 16, 3, 2, dropout=0.1, model=kind, heads=2)
        clone = build_model(ModelConfig(**model.config()))
        assert type(clone) is GNN and clone.config() == model.config()
        assert [p.shape for p in clone.parameters()] == [p.shape for p in model.parameters()]
