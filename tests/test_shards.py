"""The shard format read back: content equals the input graph, checksums guard it."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from distgnn.errors import ShardError
from distgnn.partition import shards
from distgnn.partition.run import PartitionConfig, run
from partition_graphs import random_graph

NUM_PARTS = 3


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory):
    graph = random_graph(num_nodes=400, num_edges=3000, feat_dim=5, seed=4)
    root = tmp_path_factory.mktemp("shards") / "out"
    run(PartitionConfig(graph="mem", num_parts=NUM_PARTS, out=root, quiet=True), load=lambda _s: graph)
    return graph, root


def test_part_ref_is_the_one_naming_rule(tmp_path):
    ref = shards.part_ref(tmp_path, 7)
    assert ref.info_path == tmp_path / "parts" / "part-00007.json"
    assert ref.table_path("edges") == tmp_path / "edges" / "part=7" / "data.parquet"
    assert shards.part_ref(tmp_path, 12345).info_path.name == "part-12345.json"


def test_each_table_is_one_hive_partitioned_arrow_dataset(partitioned):
    """Any Arrow tool reads a whole table with the part as a column; no other file sits in a
    table's folder and no column is named with a SQL keyword."""
    import pyarrow.dataset as ds

    graph, root = partitioned
    nodes = ds.dataset(root / "nodes", partitioning="hive").to_table()
    assert nodes.num_rows == graph.num_nodes and set(nodes.column("part").to_pylist()) == set(range(NUM_PARTS))
    assert sorted(nodes.column("orig_id").to_pylist()) == list(range(graph.num_nodes))
    edges = ds.dataset(root / "edges", partitioning="hive").to_table()
    assert int(sum(edges.column("in_part").to_pylist())) == graph.num_edges
    halo = ds.dataset(root / "halo", partitioning="hive").to_table()
    assert {"id", "orig_id", "owner", "part"} == set(halo.column_names)
    for table in shards.PART_TABLES:
        assert {p.name for p in (root / table).rglob("*") if p.is_file()} == {"data.parquet"}
    assert {"inner", "part", "order", "group", "select"}.isdisjoint(
        set(shards.EDGES_SCHEMA.names) | set(shards.HALO_SCHEMA.names) | set(nodes.column_names) - {"part"})


def test_an_old_shard_folder_is_one_line_saying_to_partition_again(partitioned, tmp_path):
    import shutil

    _graph, root = partitioned
    old = tmp_path / "old"
    shutil.copytree(root, old)
    manifest = json.loads((old / shards.MANIFEST).read_text())
    manifest["format_version"] = 1
    (old / shards.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"shard format 1, written by an older distgnn; .*partition the graph again"):
        shards.read_manifest(old)
    shutil.rmtree(old / "parts")
    (old / "part-00000").mkdir()
    with pytest.raises(ShardError, match=r"shard format 1 \(part-NNNNN folders\).*partition the graph again"):
        shards.read_part(shards.part_ref(old, 0))


def test_manifest_lists_every_file_with_its_sha256(partitioned):
    _graph, root = partitioned
    manifest = shards.read_manifest(root)
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {shards.MANIFEST}
    assert set(manifest.files) == on_disk
    for rel, digest in manifest.files.items():
        assert shards.sha256_file(root / rel) == digest
    assert manifest.data["format_version"] == shards.FORMAT_VERSION
    assert manifest.part_ref(1) == shards.part_ref(root, 1)


def test_any_parquet_reader_sees_plain_typed_columns_with_ids_delta_encoded(partitioned):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _graph, root = partitioned
    ref = shards.part_ref(root, 1)
    nodes = pq.read_table(ref.table_path(shards.NODES))
    assert nodes.schema.field("id").type == pa.int64() and nodes.schema.field("label").type == pa.int64()
    assert pa.types.is_fixed_size_list(nodes.schema.field("feat").type)  # features stay float lists
    assert pq.read_table(ref.table_path(shards.EDGES)).schema.field("src").type == pa.int64()
    for path in (*(ref.table_path(t) for t in shards.PART_TABLES), root / shards.ASSIGNMENT):
        meta = pq.ParquetFile(path).metadata
        for i in range(meta.num_columns):
            column = meta.row_group(0).column(i)
            delta = "DELTA_BINARY_PACKED" in column.encodings
            assert delta == (column.physical_type in ("INT32", "INT64")), (path.name, column.path_in_schema)


def test_parts_hold_every_node_once_with_its_data(partitioned):
    graph, root = partitioned
    seen = np.zeros(graph.num_nodes, dtype=int)
    manifest = shards.read_manifest(root)
    for p in range(NUM_PARTS):
        shard = shards.read_part(shards.part_ref(root, p))
        lo, hi = manifest.node_ranges[p]
        assert shard.info.node_ranges == manifest.node_ranges and shard.info.part_id == p
        assert shard.nodes.id.tolist() == list(range(lo, hi))
        orig = shard.nodes.orig_id
        assert np.all(np.diff(orig) > 0)  # renumbered by (part, original id)
        seen[orig] += 1
        np.testing.assert_array_equal(shard.nodes.feat, graph.feat[orig])
        np.testing.assert_array_equal(shard.nodes.label, graph.label[orig])
        for name, mask in graph.masks.items():
            np.testing.assert_array_equal(shard.nodes.masks[name], mask[orig])
    assert np.all(seen == 1)


def test_edges_are_owned_by_destination_with_contiguous_ids(partitioned):
    graph, root = partitioned
    new_id, part = shards.read_assignment(root)
    orig_of_new = np.empty_like(new_id)
    orig_of_new[new_id] = np.arange(new_id.shape[0])
    owned = Counter()
    inner_by_eid = {}
    outgoing = []
    for p in range(NUM_PARTS):
        shard = shards.read_part(shards.part_ref(root, p))
        lo, hi = shard.info.node_range
        e = shard.edges
        inner = e.in_part.astype(bool)
        n_inner = int(inner.sum())
        assert np.all(inner[:n_inner]) and not np.any(inner[n_inner:])  # inner edges first
        assert e.eid[:n_inner].tolist() == list(range(*shard.info.edge_range))
        assert np.all((e.dst[inner] >= lo) & (e.dst[inner] < hi))
        assert np.all((e.src[~inner] >= lo) & (e.src[~inner] < hi))
        assert not np.any((e.dst[~inner] >= lo) & (e.dst[~inner] < hi))
        owned.update(zip(orig_of_new[e.src[inner]].tolist(), orig_of_new[e.dst[inner]].tolist()))
        inner_by_eid.update(zip(e.eid[inner].tolist(), zip(e.src[inner].tolist(), e.dst[inner].tolist())))
        outgoing += list(zip(e.eid[~inner].tolist(), zip(e.src[~inner].tolist(), e.dst[~inner].tolist())))
        # the halo is exactly the foreign endpoints, with their owners
        foreign = set(e.src[inner][(e.src[inner] < lo) | (e.src[inner] >= hi)].tolist()) | set(e.dst[~inner].tolist())
        assert shard.halo.id.tolist() == sorted(foreign)
        assert shard.halo.owner.tolist() == part[orig_of_new[shard.halo.id]].tolist()
        assert shard.halo.orig_id.tolist() == orig_of_new[shard.halo.id].tolist()
    assert owned == Counter(zip(graph.src.tolist(), graph.dst.tolist()))
    # an outgoing edge is the same edge, same id, as stored in its owner's part
    assert outgoing and all(inner_by_eid[eid] == ends for eid, ends in outgoing)
    cut = int(np.count_nonzero(part[graph.src] != part[graph.dst]))
    assert len(outgoing) == cut == shards.read_manifest(root).data["report"]["edge_cut"]["count"]


def test_changed_shard_file_fails_verification_naming_the_file(partitioned, tmp_path):
    _graph, root = partitioned
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    path = shards.part_ref(copy, 0).table_path(shards.EDGES)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"edges/part=0/data\.parquet.*sha256"):
        shards.read_part(shards.part_ref(copy, 0), verify=True)
    assert str(path) in str(_error(shards.part_ref(copy, 0)))


def _error(ref):
    with pytest.raises(ShardError) as info:
        shards.read_part(ref)
    assert "\n" not in str(info.value)
    return info.value


def test_missing_part_json_and_unknown_version_are_shard_errors(partitioned, tmp_path):
    _graph, root = partitioned
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    ref = shards.part_ref(copy, 1)
    info = json.loads(ref.info_path.read_text())
    info["format_version"] = 99
    ref.info_path.write_text(json.dumps(info))
    assert "format_version 99" in str(_error(ref))
    ref.info_path.unlink()
    assert "parts/part-00001.json: missing part info" in str(_error(ref))
    with pytest.raises(ShardError, match="manifest"):
        shards.read_manifest(tmp_path)
