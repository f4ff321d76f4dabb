"""GraphSAGE on edge-index tensors against DGL's own SAGEConv, on blocks built by DGL."""

import subprocess
import sys

import dgl
import pytest
import torch
from dgl.nn import SAGEConv

from distgnn.errors import InputError
from distgnn.trainer import model as model_module
from distgnn.trainer.model import GraphSAGE, LayerGraph, SAGELayer, mean_aggregate, project_first


def random_block(num_nodes=60, num_edges=400, num_dst=12, seed=0):
    """A DGL block with num_dst seeds: the last has no in-edges, the one before exactly one."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    dst = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    seeds = torch.randperm(num_nodes, generator=gen)[:num_dst]
    keep = (dst != seeds[-1]) & (dst != seeds[-2])
    src = torch.cat([src[keep], seeds[:1]])
    dst = torch.cat([dst[keep], seeds[-2:-1]])
    g = dgl.graph((src, dst), num_nodes=num_nodes)
    # to_block wants a frontier: only the in-edges of the seeds.
    block = dgl.to_block(dgl.in_subgraph(g, seeds), dst_nodes=seeds)
    assert block.in_degrees()[num_dst - 2:].tolist() == [1, 0]
    assert block.in_degrees().max() > 3
    return block


def layer_of(block) -> LayerGraph:
    src, dst = block.edges()
    return LayerGraph(src.long(), dst.long(), block.num_src_nodes(), block.num_dst_nodes())


def dgl_conv_like(layer: SAGELayer) -> SAGEConv:
    conv = SAGEConv(layer.in_dim, layer.out_dim, "mean")
    with torch.no_grad():
        conv.fc_self.weight.copy_(layer.fc_self.weight)
        conv.fc_self.bias.copy_(torch.randn_like(conv.fc_self.bias))
        layer.fc_self.bias.copy_(conv.fc_self.bias)
        conv.fc_neigh.weight.copy_(layer.fc_neigh.weight)
    return conv


@pytest.mark.parametrize("in_dim,out_dim", [(32, 8), (8, 32), (16, 16)])
def test_sage_layer_matches_dgl_sageconv(in_dim, out_dim):
    torch.manual_seed(1)
    block = random_block()
    layer = SAGELayer(in_dim, out_dim)
    conv = dgl_conv_like(layer)
    h = torch.randn(block.num_src_nodes(), in_dim)
    ours = layer(layer_of(block), h)
    theirs = conv(block, h)
    assert ours.shape == (block.num_dst_nodes(), out_dim)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sparse_cost,projects", [(0, False), (10**9, True)])
def test_both_orders_of_a_narrowing_layer_match_dgl_with_gradients(monkeypatch, sparse_cost, projects):
    # On CPU a narrowing layer (in_dim > out_dim) projects first or aggregates first by a
    # cost estimate; force each order and check values and every gradient against SAGEConv.
    monkeypatch.setattr(model_module, "SPARSE_MAC_COST", sparse_cost)
    torch.manual_seed(2)
    block = random_block()
    layer = SAGELayer(32, 8)
    conv = dgl_conv_like(layer)
    assert project_first(layer_of(block), 32, 8, "cpu") is projects
    h = torch.randn(block.num_src_nodes(), 32)
    h_ours, h_theirs = h.clone().requires_grad_(), h.clone().requires_grad_()
    upstream = torch.randn(block.num_dst_nodes(), 8)
    (layer(layer_of(block), h_ours) * upstream).sum().backward()
    (conv(block, h_theirs) * upstream).sum().backward()
    torch.testing.assert_close(h_ours.grad, h_theirs.grad, atol=1e-5, rtol=1e-5)
    for ours, theirs in ((layer.fc_self, conv.fc_self), (layer.fc_neigh, conv.fc_neigh)):
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.fc_self.bias.grad, conv.fc_self.bias.grad, atol=1e-5, rtol=1e-5)


def test_project_first_weighs_dense_against_sparse_work_on_cpu_only():
    def layer(num_src, num_dst, num_edges):
        idx = torch.zeros(num_edges, dtype=torch.int64)
        return LayerGraph(idx, idx, num_src, num_dst)

    # A sampled last layer (many sources, about one edge each): aggregating first is cheaper.
    sampled = layer(num_src=9650, num_dst=1000, num_edges=8700)
    assert not project_first(sampled, 256, 16, "cpu")
    # 25 edges per source (full neighbourhoods of a dense graph): projecting first is.
    dense = layer(num_src=2000, num_dst=1000, num_edges=50_000)
    assert project_first(dense, 256, 16, "cpu")
    # A widening layer always aggregates first; off the CPU DGL's rule decides.
    assert not project_first(dense, 16, 256, "cpu")
    assert project_first(sampled, 256, 16, "cuda")


def test_isolated_destination_gets_only_its_own_term():
    block = random_block()
    lg = layer_of(block)
    h = torch.randn(lg.num_src, 4)
    agg = mean_aggregate(lg, h)
    assert torch.equal(agg[-1], torch.zeros(4))
    # a destination with edges gets the mean of exactly its sources
    d = int(lg.dst[0])
    torch.testing.assert_close(agg[d], h[lg.src[lg.dst == d]].mean(0))


def test_graphsage_matches_stacked_dgl_convs_on_sampled_blocks():
    torch.manual_seed(2)
    gen = torch.Generator().manual_seed(3)
    # ~2 in-edges per node on average: many destinations have fewer than the fanout, some none
    g = dgl.graph((torch.randint(0, 200, (400,), generator=gen), torch.randint(0, 200, (400,), generator=gen)))
    seeds = torch.arange(0, 200, 9)
    blocks = []
    for fanout in (5, 3):  # output layer first, as a sampler builds them
        frontier = dgl.sampling.sample_neighbors(g, seeds, fanout)
        block = dgl.to_block(frontier, dst_nodes=seeds)
        seeds = block.srcdata[dgl.NID]
        blocks.insert(0, block)
    model = GraphSAGE(48, 16, 5, 2, dropout=0.5).eval()
    convs = [dgl_conv_like(layer) for layer in model.layers]
    x = torch.randn(blocks[0].num_src_nodes(), 48)
    ours = model([layer_of(b) for b in blocks], x)
    h = torch.relu(convs[0](blocks[0], x))
    theirs = convs[1](blocks[1], h)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_forward_layer_with_full_neighbourhoods_equals_forward():
    torch.manual_seed(4)
    gen = torch.Generator().manual_seed(5)
    n = 50
    full = LayerGraph(torch.randint(0, n, (300,), generator=gen), torch.randint(0, n, (300,), generator=gen), n, n)
    model = GraphSAGE(6, 10, 3, 3, dropout=0.3).eval()
    x = torch.randn(n, 6)
    h = x
    for i in range(model.num_layers):
        h = model.forward_layer(i, full, h)
    torch.testing.assert_close(h, model([full] * 3, x))
    assert h.shape == (n, 3)


def test_bf16_autocast_aggregates_in_float32_and_returns_input_dtype():
    block = random_block()
    lg = layer_of(block)
    h = torch.randn(lg.num_src, 8).to(torch.bfloat16)
    agg = mean_aggregate(lg, h)
    assert agg.dtype == torch.bfloat16
    exact = mean_aggregate(lg, h.float())
    torch.testing.assert_close(agg.float(), exact, atol=1e-2, rtol=1e-2)
    model = GraphSAGE(8, 16, 4, 2, dropout=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        top = LayerGraph(torch.arange(lg.num_dst), torch.arange(lg.num_dst) % 5, lg.num_dst, 5)
        out = model([lg, top], h.float())
    assert out.shape == (5, 4)
    assert torch.isfinite(out).all()


def test_high_degree_bf16_mean_is_exact():
    # 257 is not a bf16 number (8-bit significand): a sum kept in bf16 becomes 256 and the
    # mean 0.996; summed and divided in float32 the mean is exactly 1.
    lg = LayerGraph(torch.arange(1, 258), torch.zeros(257, dtype=torch.int64), 258, 1)
    h = torch.ones(258, 2, dtype=torch.bfloat16, requires_grad=True)
    agg = mean_aggregate(lg, h)
    assert agg.dtype == torch.bfloat16
    assert agg.float().tolist() == [[1.0, 1.0]]
    agg.float().sum().backward()
    assert h.grad.dtype == torch.bfloat16
    assert torch.equal(h.grad[1:].float(), torch.full((257, 2), 1 / 257).bfloat16().float())


def test_config_round_trip_and_validation():
    model = GraphSAGE(8, 16, 4, 2, dropout=0.25)
    cfg = model.config()
    assert cfg == {"in_dim": 8, "hidden": 16, "num_classes": 4, "num_layers": 2, "dropout": 0.25, "feature_norm": "none",
                   "model": "sage", "heads": 1}
    clone = GraphSAGE.from_config(cfg)
    assert clone.config() == cfg
    assert [tuple(p.shape) for p in clone.parameters()] == [tuple(p.shape) for p in model.parameters()]
    with pytest.raises(InputError, match="num_layers"):
        GraphSAGE(8, 16, 4, 0, dropout=0.1)
    with pytest.raises(InputError, match="dropout"):
        GraphSAGE(8, 16, 4, 2, dropout=1.0)


def test_layer_graph_rejects_bad_tensors_and_sizes():
    with pytest.raises(ValueError, match="int64"):
        LayerGraph(torch.tensor([0], dtype=torch.int32), torch.tensor([0]), 1, 1)
    with pytest.raises(ValueError, match="length"):
        LayerGraph(torch.tensor([0, 1]), torch.tensor([0]), 2, 1)
    with pytest.raises(ValueError, match="num_dst"):
        LayerGraph(torch.tensor([0]), torch.tensor([0]), 1, 2)
    lg = LayerGraph(torch.tensor([1, 2]), torch.tensor([0, 0]), 3, 1)
    assert LayerGraph.from_state(lg.state()).num_src == 3
    with pytest.raises(ValueError, match="source nodes"):
        SAGELayer(4, 4)(lg, torch.randn(5, 4))


def test_compute_modules_do_not_import_dgl():
    code = (
        "import sys; import distgnn.trainer.model, distgnn.trainer.step, distgnn.trainer.checkpoint; "
        "loaded = sorted(m for m in sys.modules if m == 'dgl' or m.startswith('dgl.')); "
        "assert not loaded, loaded"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_relu_dropout_drops_p_and_keeps_the_expectation():
    from distgnn.trainer.model import ReLUDropout

    torch.manual_seed(0)
    drop = ReLUDropout(0.5)
    h = torch.ones(200, 500)
    out = drop(h)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.5) < 0.01
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 2.0))
    assert abs(out.mean().item() - 1.0) < 0.02
    drop.eval()
    assert torch.equal(drop(h - 2), torch.zeros_like(h))
    assert ReLUDropout(0.1).p == 26 / 256 and torch.equal(ReLUDropout(0.0)(h - 2), torch.zeros_like(h))


def test_relu_dropout_zeroes_negatives_and_passes_gradient_only_through_kept_positives():
    from distgnn.trainer.model import ReLUDropout

    torch.manual_seed(1)
    h = torch.randn(64, 32, requires_grad=True)
    out = ReLUDropout(0.25)(h)
    assert torch.all(out[h.detach() <= 0] == 0)
    out.sum().backward()
    kept = out.detach() != 0
    assert kept.sum() > 0.6 * (h.detach() > 0).sum()
    assert torch.allclose(out[kept], h.detach()[kept] / 0.75)
    assert torch.allclose(h.grad[kept], torch.full_like(h.grad[kept], 1 / 0.75))
    assert torch.all(h.grad[~kept] == 0)


def test_relu_dropout_mask_follows_torch_seed():
    from distgnn.trainer.model import ReLUDropout

    h = torch.rand(100, 64) + 0.1
    drop = ReLUDropout(0.5)
    torch.manual_seed(7)
    first = drop(h)
    torch.manual_seed(7)
    again = drop(h)
    assert torch.equal(first, again) and not torch.equal(first, drop(h))


@pytest.mark.parametrize("runs", [1, 2, 3])
def test_mean_matrix_of_edges_in_runs_equals_one_built_from_sorted_edges(runs):
    # A distributed block lists each part's sampled edges as one run grouped by destination;
    # the CPU build must give the matrix that the definition (1/in-degree per edge) gives.
    gen = torch.Generator().manual_seed(runs)
    num_dst, num_src = 50, 120
    degree = torch.randint(0, 6, (num_dst,), generator=gen)
    dst = torch.repeat_interleave(torch.arange(num_dst), degree)
    src = torch.randint(0, num_src, (dst.numel(),), generator=gen)
    owner = torch.arange(num_dst) % runs
    order = torch.cat([torch.nonzero(owner[dst] == r).squeeze(1) for r in range(runs)])
    built = LayerGraph(src[order], dst[order], num_src, num_dst).with_mean_matrix().adj.to_dense()
    expected = torch.zeros(num_dst, num_src)
    expected.index_put_((dst, src), 1.0 / degree[dst].float(), accumulate=True)
    assert torch.allclose(built, expected)
    # The torch build that CUDA layers use gives the same matrix.
    from distgnn.trainer.model import _mean_matrix_torch

    assert torch.equal(_mean_matrix_torch(src[order], dst[order], num_src, num_dst).to_dense(), built)


def test_mean_aggregate_gradient_equals_the_dense_products():
    # The CPU backward is SciPy's product with the transposed matrix; check it against
    # autograd through a dense matrix, with repeated edges and a destination without any.
    gen = torch.Generator().manual_seed(3)
    src = torch.tensor([0, 4, 4, 2, 5, 1, 3, 3, 6])
    dst = torch.tensor([2, 2, 2, 0, 0, 3, 3, 3, 3])
    layer = LayerGraph(src, dst, num_src=7, num_dst=5)
    h = torch.randn(7, 3, generator=gen, requires_grad=True)
    upstream = torch.randn(5, 3, generator=gen)
    (mean_aggregate(layer, h) * upstream).sum().backward()
    dense = torch.zeros(5, 7)
    dense.index_put_((dst, src), 1.0 / torch.bincount(dst, minlength=5)[dst].float(), accumulate=True)
    h_ref = h.detach().clone().requires_grad_()
    (dense @ h_ref * upstream).sum().backward()
    assert torch.allclose(h.grad, h_ref.grad, atol=1e-6)
