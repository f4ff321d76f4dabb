"""NodeRelabeler and LayerSampler against DGL's to_block and NeighborSampler.

to_block numbers the non-seed sources in order of first appearance when DGL runs on one
thread, as trainers do (OMP_NUM_THREADS=1); on several threads its concurrent hash map may
interleave them, and NeighborSampler switches to a fused sampler with another use of the
RNG. So the comparisons with DGL run it on one thread.
"""

from __future__ import annotations

import pickle

import dgl
import numpy as np
import pytest
import torch

from distgnn.trainer.relabel import NodeRelabeler
from distgnn.trainer.sampling import LayerSampler, make_loader


@pytest.fixture
def one_dgl_thread():
    before = dgl.utils.get_num_threads()
    dgl.utils.set_num_threads(1)
    yield
    dgl.utils.set_num_threads(before)


def frontier(rng: np.random.Generator, num_nodes: int, num_seeds: int, num_edges: int):
    seeds = rng.choice(num_nodes, num_seeds, replace=False)
    dst = np.sort(rng.choice(seeds, num_edges))
    # Sources drawn partly from the seeds themselves, partly from elsewhere, with repeats.
    pool = np.concatenate([seeds, rng.choice(num_nodes, num_edges // 3 + 1)])
    src = rng.choice(pool, num_edges)
    return seeds, src, dst


def assert_same_block(nodes, local_src, local_dst, block) -> None:
    """The same source nodes in the same order, and the same local edges."""
    assert np.array_equal(nodes, block.srcdata[dgl.NID].numpy())
    block_src, block_dst = (t.numpy() for t in block.edges())
    assert np.array_equal(local_src, block_src) and np.array_equal(local_dst, block_dst)


@pytest.mark.parametrize("num_seeds,num_edges", [(1, 0), (5, 1), (40, 400), (1000, 25000)])
def test_relabel_numbers_nodes_exactly_as_to_block(num_seeds, num_edges, one_dgl_thread):
    rng = np.random.default_rng(num_edges)
    n = 50_000
    seeds, src, dst = frontier(rng, n, num_seeds, num_edges)
    relabeler = NodeRelabeler(n)
    nodes, local_src, local_dst = relabeler.relabel(seeds, src, dst)

    expected = list(seeds)
    for u in src:
        if u not in expected:
            expected.append(u)
    assert nodes.tolist() == [int(u) for u in expected]
    assert np.array_equal(nodes[local_src], src) and np.array_equal(nodes[local_dst], dst)
    block = dgl.to_block(dgl.graph((torch.from_numpy(src), torch.from_numpy(dst)), num_nodes=n), torch.from_numpy(seeds))
    assert_same_block(nodes, local_src, local_dst, block)
    assert local_src.dtype == np.int64 and local_dst.dtype == np.int64
    assert (relabeler._table == -1).all(), "every slot a call wrote is cleared before it returns"


def test_relabel_refuses_repeated_seeds_and_foreign_destinations_and_stays_clean():
    relabeler = NodeRelabeler(100)
    with pytest.raises(ValueError, match="not distinct"):
        relabeler.relabel(np.array([3, 7, 3]), np.array([1]), np.array([3]))
    with pytest.raises(ValueError, match="not one of the seeds"):
        relabeler.relabel(np.array([3, 7]), np.array([1, 2]), np.array([3, 9]))
    assert (relabeler._table == -1).all()
    nodes, local_src, local_dst = relabeler.relabel(np.array([7, 3]), np.array([9, 3, 9]), np.array([3, 7, 7]))
    assert nodes.tolist() == [7, 3, 9] and local_src.tolist() == [2, 1, 2] and local_dst.tolist() == [1, 0, 0]


def test_relabeler_pickles_without_its_table():
    relabeler = NodeRelabeler(1000)
    relabeler.relabel(np.array([1, 2]), np.array([5]), np.array([1]))
    copy = pickle.loads(pickle.dumps(relabeler))
    assert copy._table is None and copy.num_nodes == 1000
    assert copy.relabel(np.array([1, 2]), np.array([5]), np.array([1]))[0].tolist() == [1, 2, 5]


def test_relabeler_refuses_graphs_beyond_int32():
    with pytest.raises(ValueError, match="num_nodes"):
        NodeRelabeler(2**31)


def random_graph(num_nodes: int = 3000, num_edges: int = 30000) -> dgl.DGLGraph:
    gen = torch.Generator().manual_seed(1)
    src = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    dst = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    return dgl.graph((src, dst), num_nodes=num_nodes)


@pytest.mark.parametrize("fanouts", [(3, 5), (-1,), (2, 2, 4)])
@pytest.mark.parametrize("dense_table", [True, False])
def test_layer_sampler_gives_dgl_neighbor_samplers_blocks(fanouts, dense_table, one_dgl_thread):
    """Same RNG state, same graph: the same sampled edges and edge ids as DGL's
    NeighborSampler with to_block, whichever way the sampler renumbers."""
    g = random_graph()
    seeds = torch.randperm(g.num_nodes(), generator=torch.Generator().manual_seed(2))[:200]
    ours = LayerSampler(fanouts, g.num_nodes())
    if not dense_table:
        ours.relabeler = None
    dgl.seed(7)
    input_nodes, output_nodes, layers = ours.sample_blocks(g, seeds)
    dgl.seed(7)
    their_input, their_output, blocks = dgl.dataloading.NeighborSampler(list(fanouts)).sample_blocks(g, seeds)

    assert torch.equal(input_nodes, their_input) and torch.equal(output_nodes, their_output)
    assert len(layers) == len(blocks) == len(fanouts)
    for layer, block in zip(layers, blocks):
        assert (layer.graph.num_src, layer.graph.num_dst) == (block.num_src_nodes(), block.num_dst_nodes())
        assert_same_block(layer.src_nodes.numpy(), layer.graph.src.numpy(), layer.graph.dst.numpy(), block)
        assert torch.equal(layer.dst_nodes, block.dstdata[dgl.NID])
        assert torch.equal(layer.eids, block.edata[dgl.EID])
        assert layer.graph.adj is not None, "the mean matrix is built on the sampling side"


def test_loader_yields_every_seed_once_from_its_own_copy_of_the_ids():
    """DGL's loader reads the seed ids from a NumPy array the loader owns: with sampler
    processes DGL moves the id tensor's memory into shared memory while pickling it, so a
    view of that tensor could read freed memory."""
    g = random_graph()
    nids = torch.randperm(g.num_nodes(), generator=torch.Generator().manual_seed(3))[:250]
    loader = make_loader(g, nids, (2, 3), 64, shuffle=True)
    assert isinstance(loader.dataset, np.ndarray) and not np.shares_memory(loader.dataset, nids.numpy())
    seen = []
    for input_nodes, seeds, layers in loader:
        assert torch.equal(layers[-1].dst_nodes, seeds) and torch.equal(layers[0].src_nodes, input_nodes)
        seen.append(seeds)
    assert torch.equal(torch.sort(torch.cat(seen)).values, torch.sort(nids).values)
