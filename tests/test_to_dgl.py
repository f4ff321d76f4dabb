"""Shard -> DGL 2.1 partition files, proven with dgl.distributed.load_partition."""

from __future__ import annotations

import os
import shutil

import dgl
import numpy as np
import pytest

from distgnn.errors import ShardError
from distgnn.partition import shards, to_dgl
from distgnn.partition.run import PartitionConfig, run
from partition_graphs import pubmed


def _partition(graph, root, num_parts):
    run(PartitionConfig(graph="mem", num_parts=num_parts, out=root, quiet=True), load=lambda _s: graph)


def _in_neighbours(src: np.ndarray, dst: np.ndarray, n: int) -> list[list[int]]:
    order = np.lexsort((src, dst))
    bounds = np.searchsorted(dst[order], np.arange(n + 1))
    s = src[order]
    return [s[bounds[i]:bounds[i + 1]].tolist() for i in range(n)]


def _check_against_input(graph, root, num_parts, out_dir):
    """Every node's in-neighbours, features, labels and masks, read back through DGL,
    equal the input graph's (in original ids)."""
    configs = {to_dgl.materialize_part(shards.part_ref(root, p), out_dir) for p in range(num_parts)}
    assert len(configs) == 1
    config = str(configs.pop())
    expected = _in_neighbours(graph.src, graph.dst, graph.num_nodes)
    covered = np.zeros(graph.num_nodes, dtype=int)
    manifest = shards.read_manifest(root)
    for p in range(num_parts):
        g, node_feats, edge_feats, gpb, name, ntypes, etypes = dgl.distributed.load_partition(config, p)
        assert name == graph.name and gpb.num_partitions() == num_parts and edge_feats == {}
        lo, hi = manifest.node_ranges[p]
        inner = g.ndata["inner_node"].numpy().astype(bool)
        n_inner = hi - lo
        assert inner[:n_inner].all() and not inner[n_inner:].any()
        assert g.ndata[dgl.NID][:n_inner].tolist() == list(range(lo, hi))
        assert np.all(g.ndata["part_id"].numpy()[:n_inner] == p)
        assert np.all(g.ndata["part_id"].numpy()[n_inner:] != p)
        inner_edge = g.edata["inner_edge"].numpy().astype(bool)
        eid = g.edata[dgl.EID].numpy()
        assert eid[inner_edge].tolist() == list(range(*manifest.edge_ranges[p]))
        assert np.all(gpb.nid2partid(g.ndata[dgl.NID]).numpy() == g.ndata["part_id"].numpy())
        assert np.all(gpb.eid2partid(g.edata[dgl.EID][inner_edge]).numpy() == p)

        orig = node_feats["_N/orig_id"].numpy()
        covered[orig] += 1
        np.testing.assert_array_equal(node_feats["_N/feat"].numpy(), graph.feat[orig])
        np.testing.assert_array_equal(node_feats["_N/label"].numpy(), graph.label[orig])
        for mask, values in graph.masks.items():
            assert node_feats[f"_N/{mask}"].dtype == dgl.backend.uint8
            np.testing.assert_array_equal(node_feats[f"_N/{mask}"].numpy().astype(bool), values[orig])

        # in-neighbours of each inner node, mapped back to original ids
        new_to_orig = np.empty(graph.num_nodes, dtype=np.int64)
        new_ids, _part = shards.read_assignment(root)
        new_to_orig[new_ids] = np.arange(graph.num_nodes)
        src, dst = (t.numpy() for t in g.edges())
        gid = g.ndata[dgl.NID].numpy()
        keep = dst < n_inner
        got = _in_neighbours(new_to_orig[gid[src[keep]]], dst[keep], n_inner)
        for local, node in enumerate(orig):
            assert got[local] == expected[node], f"node {node}"
    assert np.all(covered == 1)


@pytest.fixture(autouse=True)
def _dgl_verifies(monkeypatch):
    monkeypatch.setenv("DGL_DIST_DEBUG", "1")  # load_partition then checks the partition book


def test_pubmed_parts_load_in_dgl_and_match_the_input(tmp_path):
    graph = pubmed()
    _partition(graph, tmp_path / "shards", 3)
    _check_against_input(graph, tmp_path / "shards", 3, tmp_path / "dgl")


def test_synthetic_parts_load_in_dgl_and_match_the_input(tmp_path):
    from distgnn.graph import load_graph

    graph = load_graph("synthetic:nodes=3000,degree=6,classes=4,feat_dim=8,seed=2")
    _partition(graph, tmp_path / "shards", 4)
    _check_against_input(graph, tmp_path / "shards", 4, tmp_path / "dgl")


def test_config_matches_dgl_partition_graph_layout(tmp_path):
    from partition_graphs import random_graph

    graph = random_graph(num_nodes=120, num_edges=600)
    _partition(graph, tmp_path / "s", 2)
    config_path = to_dgl.materialize_part(shards.part_ref(tmp_path / "s", 1), tmp_path / "d")
    import json

    config = json.loads(config_path.read_text())
    assert config_path.name == "rand.json"
    assert config["node_map"]["_N"][-1][1] == 120 and config["edge_map"]["_N:_E:_N"][-1][1] == 600
    assert config["part-1"] == {"node_feats": "part1/node_feat.dgl", "edge_feats": "part1/edge_feat.dgl",
                                "part_graph": "part1/graph.dgl"}
    # only this part's files were written
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["part1", "rand.json"]
    assert sorted(p.name for p in (tmp_path / "d" / "part1").iterdir()) == ["edge_feat.dgl", "graph.dgl", "node_feat.dgl"]


def test_cached_materialize_reuses_until_the_shard_changes(tmp_path):
    from partition_graphs import random_graph

    _partition(random_graph(), tmp_path / "s", 2)
    part = shards.part_ref(tmp_path / "s", 0)
    first = to_dgl.cached_materialize(part, tmp_path / "cache")
    graph_file = first.parent / "part0" / "graph.dgl"
    stamp = graph_file.stat().st_mtime_ns
    again = to_dgl.cached_materialize(part, tmp_path / "cache")
    assert again == first and graph_file.stat().st_mtime_ns == stamp
    os.utime(part.table_path(shards.EDGES), ns=(1, 1))  # same content, but no longer the file we built from
    rebuilt = to_dgl.cached_materialize(part, tmp_path / "cache")
    assert rebuilt == first and graph_file.stat().st_mtime_ns != stamp
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.parent.name]


def test_corrupt_shard_is_refused_and_leaves_no_cache(tmp_path):
    from partition_graphs import random_graph

    _partition(random_graph(), tmp_path / "s", 2)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "s", copy)
    part = shards.part_ref(copy, 1)
    data = bytearray(part.table_path(shards.NODES).read_bytes())
    data[100] ^= 0x55
    part.table_path(shards.NODES).write_bytes(bytes(data))
    with pytest.raises(ShardError, match="nodes/part=1/data.parquet"):
        to_dgl.cached_materialize(part, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("damage", ["endpoint_not_in_halo", "endpoint_out_of_range", "halo_out_of_range"])
def test_part_graph_refuses_edges_or_halo_outside_the_part(tmp_path, damage):
    from partition_graphs import random_graph

    _partition(random_graph(), tmp_path / "s", 2)
    shard = shards.read_part(shards.part_ref(tmp_path / "s", 0))
    lo, hi = shard.info.node_range
    outside = np.setdiff1d(np.arange(shard.info.num_nodes), np.arange(lo, hi))
    src = np.array(shard.edges.src)
    if damage == "endpoint_not_in_halo":
        src[0] = np.setdiff1d(outside, shard.halo.id)[0]
    elif damage == "endpoint_out_of_range":
        src[0] = shard.info.num_nodes
    else:
        shard.halo.id = np.append(shard.halo.id, shard.info.num_nodes)
    shard.edges.src = src
    expected = "halo/part=0/data.parquet: a halo id is not" if damage == "halo_out_of_range" else \
        "edges/part=0/data.parquet: an edge endpoint"
    with pytest.raises(ShardError, match=expected):
        to_dgl.local_graph_arrays(shard)
