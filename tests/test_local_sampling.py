"""Part-local sampling by offsets gives exactly DGL's result on distgnn's partitions."""

from __future__ import annotations

import dgl
import numpy as np
import pytest
import torch
from dgl.distributed import graph_services

from distgnn.partition import shards, to_dgl
from distgnn.partition.run import PartitionConfig, run
from distgnn.trainer import local_sampling
from partition_graphs import pubmed

NUM_PARTS = 3


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """PubMed in 3 parts, materialised; each part graph as a server holds it (CSC only)."""
    root = tmp_path_factory.mktemp("ls")
    graph = pubmed()
    run(PartitionConfig(graph="mem", num_parts=NUM_PARTS, out=root / "shards", quiet=True), load=lambda _s: graph)
    configs = {to_dgl.materialize_part(shards.part_ref(root / "shards", p), root / "dgl") for p in range(NUM_PARTS)}
    config = configs.pop()
    loaded = []
    for p in range(NUM_PARTS):
        g, _nf, _ef, gpb, *_ = dgl.distributed.load_partition(str(config), p, load_feats=False)
        loaded.append((g.formats(["csc"]), gpb))
    return loaded


@pytest.fixture(autouse=True)
def restore_dgl():
    original = graph_services._sample_neighbors_dgl
    yield
    local_sampling.uninstall()
    assert graph_services._sample_neighbors_dgl is original


def _own_nodes(gpb) -> torch.Tensor:
    return gpb.partid2nids(gpb.partid)


@pytest.mark.parametrize("part", range(NUM_PARTS))
def test_offset_sampling_equals_dgl_sampling(parts, part):
    g, gpb = parts[part]
    dgl_sample = graph_services._sample_neighbors_dgl
    assert local_sampling.install(g, gpb)
    assert graph_services._sample_neighbors_dgl is not dgl_sample
    own = _own_nodes(gpb)
    rng = np.random.default_rng(part)
    for size, fanout in ((50, 25), (1000, 10), (own.numel(), 5)):
        seeds = own[torch.from_numpy(rng.choice(own.numel(), size, replace=False))]
        dgl.seed(11)
        expected = dgl_sample(g, gpb, seeds, fanout)
        dgl.seed(11)
        got = graph_services._sample_neighbors_dgl(g, gpb, seeds, fanout)
        assert got.global_src.numel() > 0
        for name in ("global_src", "global_dst", "global_eids"):
            assert torch.equal(getattr(got, name), getattr(expected, name)), name


def test_other_graphs_and_options_go_to_dgl(parts):
    (csc_only, gpb0), (g1, gpb1) = parts[0], parts[1]
    g0 = csc_only.formats(["csc", "csr"])  # out-edge sampling needs CSR
    assert local_sampling.install(g0, gpb0)
    for kwargs, graph, book in (({}, g1, gpb1), ({"edge_dir": "out"}, g0, gpb0)):
        seeds = _own_nodes(book)[:100]
        dgl.seed(2)
        got = graph_services._sample_neighbors_dgl(graph, book, seeds, 5, **kwargs)
        dgl.seed(2)
        expected = local_sampling._dgl_sample(graph, book, seeds, 5, **kwargs)
        for name in ("global_src", "global_dst", "global_eids"):
            assert torch.equal(getattr(got, name), getattr(expected, name)), (kwargs, name)


def test_a_part_graph_in_another_layout_is_left_to_dgl(parts):
    g, gpb = parts[0]
    own = _own_nodes(gpb)
    assert local_sampling.contiguous_layout(g, (int(own[0]), int(own[-1]) + 1)) is not None
    shifted = (int(own[0]) + 1, int(own[-1]) + 2)  # inner nodes not where the range says
    assert local_sampling.contiguous_layout(g, shifted) is None
    # Edge ids that are not one run (DGL's partition_graph reshuffles, for one).
    scrambled = g.clone()
    eid = scrambled.edata[dgl.EID].clone()
    eid[:2] = eid[:2].flip(0)
    scrambled.edata[dgl.EID] = eid
    dgl_sample = graph_services._sample_neighbors_dgl
    assert not local_sampling.install(scrambled, gpb)
    assert graph_services._sample_neighbors_dgl is dgl_sample
