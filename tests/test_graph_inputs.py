"""Graph input readers (Parquet folder, edge list, DGL file), validation and probing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distgnn.errors import InputError
from distgnn.graph import GraphData, load_graph, probe_graph, resolve_spec, validate_graph

DATA = Path(__file__).resolve().parents[1] / "data"
PUBMED = DATA / "pubmed"
CORA = DATA / "cora"


# --- helpers -----------------------------------------------------------------

def _error(spec) -> str:
    with pytest.raises(InputError) as info:
        load_graph(str(spec))
    message = str(info.value)
    assert "\n" not in message
    return message


def _feat_array(rows: np.ndarray) -> pa.Array:
    rows = np.asarray(rows, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])


def _folder(root: Path, src, dst, *, nodes: dict | None = None, meta: dict | None = None,
            edges_table: pa.Table | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if edges_table is None:
        edges_table = pa.table({"src": pa.array(src, pa.int64()), "dst": pa.array(dst, pa.int64())})
    pq.write_table(edges_table, root / "edges.parquet")
    if nodes is not None:
        pq.write_table(pa.table(nodes), root / "nodes.parquet")
    if meta is not None:
        (root / "meta.json").write_text(json.dumps(meta))
    return root


def _small(tmp_path: Path, **nodes) -> Path:
    """A 4-node, 4-edge graph with the given nodes.parquet columns."""
    return _folder(tmp_path / "g", [0, 1, 2, 3], [1, 2, 3, 0], nodes=nodes or None)


def _reference(folder: Path) -> dict:
    """The folder's arrays read directly with pyarrow, independently of the reader."""
    edges = pq.read_table(folder / "edges.parquet")
    nodes = pq.read_table(folder / "nodes.parquet")
    feat = nodes.column("feat").combine_chunks()
    out = {
        "src": edges.column("src").to_numpy(),
        "dst": edges.column("dst").to_numpy(),
        "feat": feat.flatten().to_numpy().reshape(len(feat), -1),
        "label": nodes.column("label").to_numpy(),
    }
    for mask in ("train_mask", "val_mask", "test_mask"):
        if mask in nodes.column_names:
            out[mask] = nodes.column(mask).to_numpy()
    return out


@pytest.fixture(scope="module")
def pubmed_ref() -> dict:
    return _reference(PUBMED)


@pytest.fixture(scope="module")
def cora_ref() -> dict:
    return _reference(CORA)


def _assert_matches(g: GraphData, ref: dict) -> None:
    np.testing.assert_array_equal(g.src, ref["src"])
    np.testing.assert_array_equal(g.dst, ref["dst"])
    np.testing.assert_array_equal(g.feat, ref["feat"])
    np.testing.assert_array_equal(g.label, ref["label"])
    assert set(g.masks) == {k for k in ref if k.endswith("_mask")}
    for name, mask in g.masks.items():
        np.testing.assert_array_equal(mask, ref[name])
    assert g.src.dtype == np.int64 and g.feat.dtype == np.float32 and g.label.dtype == np.int64


def _write_edge_list(path: Path, src, dst, *, sep: str = ",", header: bool = False,
                     comments: bool = False) -> Path:
    lines = []
    if comments:
        lines += ["# an edge list", ""]
    if header:
        lines.append(f"src{sep}dst")
    lines += [f"{s}{sep}{d}" for s, d in zip(np.asarray(src).tolist(), np.asarray(dst).tolist())]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- Parquet graph folder ----------------------------------------------------------

def test_pubmed_folder_round_trip(pubmed_ref):
    g = load_graph(str(PUBMED))
    _assert_matches(g, pubmed_ref)
    assert (g.name, g.num_nodes, g.num_edges, g.feat_dim, g.num_classes) == (
        "pubmed", 19717, 88648, 500, 3)
    assert g.feat.flags.writeable and g.src.flags.writeable


def test_cora_folder_is_directed_without_masks(cora_ref):
    g = load_graph(str(CORA))
    _assert_matches(g, cora_ref)
    assert (g.name, g.num_nodes, g.num_edges, g.feat_dim, g.num_classes) == (
        "cora", 2708, 5429, 1433, 7)
    assert g.masks == {}
    pairs = set(zip(g.src.tolist(), g.dst.tolist()))
    assert any((d, s) not in pairs for s, d in pairs)


def test_many_row_groups_give_same_arrays_and_progress(tmp_path, cora_ref):
    folder = tmp_path / "cora rg"
    folder.mkdir()
    pq.write_table(pq.read_table(CORA / "edges.parquet"), folder / "edges.parquet",
                   row_group_size=1000)
    pq.write_table(pq.read_table(CORA / "nodes.parquet"), folder / "nodes.parquet",
                   row_group_size=500)
    calls = []
    g = load_graph(str(folder), progress=lambda *a: calls.append(a))
    _assert_matches(g, cora_ref)
    assert g.name == "cora_rg"
    edges = [c for c in calls if c[0] == "read edges"]
    nodes = [c for c in calls if c[0] == "read nodes"]
    assert [c[1] for c in edges] == [1000, 2000, 3000, 4000, 5000, 5429]
    assert len(nodes) == 6 and nodes[-1][1:] == (2708, 2708)


def test_plain_list_features_with_equal_lengths_are_accepted(tmp_path):
    rows = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
    g = load_graph(str(_small(tmp_path, feat=pa.array(rows, pa.list_(pa.float64())))))
    np.testing.assert_array_equal(g.feat, np.array(rows, np.float32))


def test_num_nodes_from_max_id_and_meta(tmp_path):
    g = load_graph(str(_folder(tmp_path / "a", [0, 5], [5, 2])))
    assert g.num_nodes == 6 and g.name == "a"
    g = load_graph(str(_folder(tmp_path / "b", [0, 5], [5, 2], meta={"num_nodes": 10,
                                                                       "name": "my graph"})))
    assert g.num_nodes == 10 and g.name == "my_graph"


def test_int32_ids_and_null_labels_are_converted(tmp_path):
    edges = pa.table({"src": pa.array([0, 1], pa.int32()), "dst": pa.array([1, 2], pa.int32())})
    folder = _folder(tmp_path / "g", None, None, edges_table=edges,
                     nodes={"label": pa.array([0, None, 1], pa.int64())})
    g = load_graph(str(folder))
    assert g.src.dtype == np.int64
    np.testing.assert_array_equal(g.label, [0, -1, 1])
    assert g.num_classes == 2


# --- bad Parquet inputs -----------------------------------------------------------

def test_missing_edges_file(tmp_path):
    (tmp_path / "g").mkdir()
    message = _error(tmp_path / "g")
    assert "edges.parquet" in message and "no such file" in message


def test_unreadable_parquet_file(tmp_path):
    folder = _small(tmp_path)
    (folder / "edges.parquet").write_bytes(b"this is not parquet")
    assert "edges.parquet: not a readable Parquet file" in _error(folder)


def test_missing_column(tmp_path):
    table = pa.table({"src": pa.array([0, 1], pa.int64()), "target": pa.array([1, 0], pa.int64())})
    folder = _folder(tmp_path / "g", None, None, edges_table=table)
    assert "edges.parquet: missing column 'dst'" in _error(folder)


def test_string_src_column(tmp_path):
    table = pa.table({"src": pa.array(["0", "1"]), "dst": pa.array([1, 0], pa.int64())})
    message = _error(_folder(tmp_path / "g", None, None, edges_table=table))
    assert "edges.parquet: column 'src' must be an integer type, got string" in message


def test_float_dst_column(tmp_path):
    table = pa.table({"src": pa.array([0, 1], pa.int64()), "dst": pa.array([1.0, 0.0])})
    message = _error(_folder(tmp_path / "g", None, None, edges_table=table))
    assert "column 'dst' must be an integer type, got double" in message


def test_null_node_id(tmp_path):
    table = pa.table({"src": pa.array([0, None, 1], pa.int64()),
                      "dst": pa.array([1, 0, 0], pa.int64())})
    message = _error(_folder(tmp_path / "g", None, None, edges_table=table))
    assert "column 'src' row 1: value is null" in message


def test_negative_node_id_names_row(tmp_path):
    message = _error(_folder(tmp_path / "g", [0, 1, 2, -4, -1], [1, 2, 0, 0, 0]))
    assert "edges.parquet: column 'src' row 3: node id -4 is negative" in message


def test_out_of_range_node_id_names_row(tmp_path):
    folder = _folder(tmp_path / "g", [0, 1, 2], [1, 2, 7], nodes={"label": [0, 1, 0, 1]})
    message = _error(folder)
    assert "column 'dst' row 2: node id 7 is out of range (the graph has 4 nodes" in message


def test_nan_feature_names_row(tmp_path):
    feat = np.ones((4, 3), np.float32)
    feat[2, 1] = np.nan
    assert "nodes.parquet: column 'feat' row 2: feature is NaN or infinite" in _error(
        _small(tmp_path, feat=_feat_array(feat)))


def test_inf_feature_names_row_across_row_groups(tmp_path):
    folder = _small(tmp_path)
    feat = np.ones((4, 3), np.float32)
    feat[3, 0] = np.inf
    pq.write_table(pa.table({"feat": _feat_array(feat)}), folder / "nodes.parquet",
                   row_group_size=2)
    assert "column 'feat' row 3: feature is NaN or infinite" in _error(folder)


def test_ragged_feature_lists_name_row(tmp_path):
    rows = [[1.0, 2.0], [3.0, 4.0], [5.0], [7.0, 8.0]]
    message = _error(_small(tmp_path, feat=pa.array(rows, pa.list_(pa.float32()))))
    assert "column 'feat' row 2: feature list has 1 values, expected 2 (ragged lists)" in message


def test_null_feature_row(tmp_path):
    rows = pa.array([[1.0], None, [2.0], [3.0]], pa.list_(pa.float32()))
    assert "column 'feat' row 1: feature list is null" in _error(_small(tmp_path, feat=rows))


def test_corrupt_row_group(tmp_path):
    folder = _small(tmp_path, label=[0, 1, 0, 1])
    data = bytearray((folder / "nodes.parquet").read_bytes())
    data[4:40] = b"\xff" * 36  # the first data page, after the magic bytes
    (folder / "nodes.parquet").write_bytes(bytes(data))
    assert "nodes.parquet: row group 0: cannot read" in _error(folder)


def test_feature_column_of_wrong_type(tmp_path):
    message = _error(_small(tmp_path, feat=pa.array(["a", "b", "c", "d"])))
    assert "column 'feat' must be a list of floats, got string" in message


def test_label_of_wrong_type(tmp_path):
    message = _error(_small(tmp_path, label=pa.array([0.0, 1.0, 0.0, 1.0])))
    assert "column 'label' must be an integer type, got double" in message


def test_mask_of_wrong_type(tmp_path):
    message = _error(_small(tmp_path, train_mask=pa.array([1, 0, 1, 0], pa.int8())))
    assert "column 'train_mask' must be bool, got int8" in message


def test_label_count_differs_from_node_count(tmp_path):
    folder = _folder(tmp_path / "g", [0, 1], [1, 0], nodes={"label": [0, 1, 1]},
                     meta={"num_nodes": 5})
    message = _error(folder)
    assert "nodes.parquet: column 'label' has 3 rows but the graph has 5 nodes" in message
    assert "meta.json num_nodes" in message


def test_mask_count_differs_from_node_count(tmp_path):
    folder = _folder(tmp_path / "g", [0, 1], [1, 0], nodes={"test_mask": [True, False]},
                     meta={"num_nodes": 3})
    assert "column 'test_mask' has 2 rows but the graph has 3 nodes" in _error(folder)


def test_label_below_minus_one(tmp_path):
    assert "column 'label' row 1: label -2 is invalid" in _error(
        _small(tmp_path, label=[0, -2, 1, 1]))


def test_label_not_below_num_classes(tmp_path):
    folder = _folder(tmp_path / "g", [0, 1], [1, 0], nodes={"label": [0, 3]},
                     meta={"num_classes": 3})
    assert "column 'label' row 1: label 3 is not below num_classes=3" in _error(folder)


def test_a_graph_with_no_labelled_node_loads_without_classes(tmp_path):
    graph = load_graph(str(_small(tmp_path, label=[-1, -1, -1, -1])))
    assert graph.num_classes is None and graph.label.tolist() == [-1] * 4


def test_graph_without_edges(tmp_path):
    message = _error(_folder(tmp_path / "g", [], [], meta={"num_nodes": 3}))
    assert message.endswith("the graph has no edges")


def test_graph_without_nodes():
    g = GraphData(name="g", num_nodes=0, src=np.empty(0, np.int64), dst=np.empty(0, np.int64))
    with pytest.raises(InputError, match=r"the graph is empty \(0 nodes\)"):
        validate_graph(g)


def test_invalid_meta_json(tmp_path):
    folder = _small(tmp_path)
    (folder / "meta.json").write_text('{\n  "name": "x",\n  oops\n}')
    assert "meta.json: line 3: invalid JSON" in _error(folder)


def test_meta_num_classes_negative(tmp_path):
    folder = _folder(tmp_path / "g", [0], [1], meta={"num_classes": -1})
    assert "meta.json: 'num_classes' must be a non-negative integer, got -1" in _error(folder)


def test_meta_num_classes_zero_is_an_unlabelled_graph(tmp_path):
    graph = load_graph(str(_folder(tmp_path / "g", [0, 1], [1, 0], meta={"num_classes": 0})))
    assert graph.num_classes is None


# --- GraphData invariants --------------------------------------------------------

def _graph(**kw) -> GraphData:
    args = dict(name="g", num_nodes=3, src=np.array([0, 1], np.int64),
                dst=np.array([1, 2], np.int64), source="test")
    args.update(kw)
    return GraphData(**args)


def test_validate_graph_accepts_consistent_graph():
    g = _graph(label=np.array([0, 1, -1]), masks={"train_mask": np.ones(3, bool)},
               feat=np.zeros((3, 2), np.float32), num_classes=2)
    assert validate_graph(g, deep=True) is g


def test_validate_graph_label_length():
    with pytest.raises(InputError, match="column 'label': has 2 rows but the graph has 3"):
        validate_graph(_graph(label=np.array([0, 1])))


def test_validate_graph_mask_length():
    with pytest.raises(InputError, match="column 'val_mask': has 4 rows but the graph has 3"):
        validate_graph(_graph(masks={"val_mask": np.ones(4, bool)}))


def test_validate_graph_bad_name():
    with pytest.raises(InputError, match="graph name 'a b'"):
        validate_graph(_graph(name="a b"))


def test_validate_graph_deep_checks_ids():
    with pytest.raises(InputError, match="column 'dst' row 1: node id 3 is out of range"):
        validate_graph(_graph(dst=np.array([1, 3], np.int64)), deep=True)


# --- edge lists --------------------------------------------------------------------

@pytest.mark.parametrize(("suffix", "sep"), [(".csv", ","), (".tsv", "\t"), (".txt", " ")])
def test_edge_list_with_nodes_parquet_round_trip(tmp_path, cora_ref, suffix, sep):
    shutil.copy(CORA / "nodes.parquet", tmp_path / "nodes.parquet")
    path = _write_edge_list(tmp_path / f"cora-edges{suffix}", cora_ref["src"], cora_ref["dst"],
                            sep=sep, header=True, comments=True)
    g = load_graph(str(path))
    _assert_matches(g, cora_ref)
    assert (g.name, g.num_nodes, g.num_classes) == ("cora-edges", 2708, 7)


def test_pubmed_csv_round_trip_with_progress(tmp_path, pubmed_ref):
    shutil.copy(PUBMED / "nodes.parquet", tmp_path / "nodes.parquet")
    path = _write_edge_list(tmp_path / "pubmed.csv", pubmed_ref["src"], pubmed_ref["dst"])
    calls = []
    g = load_graph(str(path), progress=lambda *a: calls.append(a))
    _assert_matches(g, pubmed_ref)
    done = [c for c in calls if c[0] == "read edges"]
    assert done and done[-1][1] == done[-1][2] == path.stat().st_size


def test_edge_list_without_nodes_parquet(tmp_path):
    path = tmp_path / "my graph.v2.txt"
    path.write_text("# SNAP style\n0\t4\n  4 2  # trailing comment\n\n2\t0\n")
    g = load_graph(str(path))
    assert (g.name, g.num_nodes) == ("my_graph_v2", 5)
    np.testing.assert_array_equal(g.src, [0, 4, 2])
    np.testing.assert_array_equal(g.dst, [4, 2, 0])
    assert g.feat is None and g.label is None


def test_edge_list_unparsable_line(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("src,dst\n# c\n0,1\n1,2\n2,x\n3,0\n")
    assert _error(path) == f"{path} line 5: expected two integer node ids, got '2,x'"


def test_edge_list_line_with_three_fields(tmp_path):
    path = tmp_path / "e.tsv"
    path.write_text("0\t1\n1\t2\t5\n")
    assert f"{path} line 2: expected two integer node ids" in _error(path)


def test_edge_list_fractional_id(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text("0 1\n1 2\n\n2.5 3\n")
    assert f"{path} line 4: expected two integer node ids, got '2.5 3'" in _error(path)


def test_edge_list_bad_first_line(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("# comment\nfrom,to\n0,1\n")
    assert f"{path} line 2: expected two integer node ids or the header 'src,dst'" in _error(path)


def test_edge_list_negative_id_names_line(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("src,dst\n0,1\n# skipped\n\n1,-3\n")
    assert _error(path) == f"{path} line 5 (dst): node id -3 is negative"


def test_edge_list_id_beyond_nodes_parquet_names_line(tmp_path):
    pq.write_table(pa.table({"label": [0, 1, 0]}), tmp_path / "nodes.parquet")
    path = tmp_path / "e.csv"
    path.write_text("0,1\n1,2\n3,0\n")
    assert f"{path} line 3 (src): node id 3 is out of range (the graph has 3 nodes" in _error(path)


def test_edge_list_with_only_comments(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("# nothing\n\n")
    assert "the graph has no edges" in _error(path)


def test_edge_list_missing_file(tmp_path):
    assert f"{tmp_path / 'nope.csv'}: no such file" in _error(tmp_path / "nope.csv")


def test_unknown_format(tmp_path):
    path = tmp_path / "graph.xyz"
    path.write_text("0 1\n")
    assert "unknown graph format" in _error(path)


def test_nonexistent_path(tmp_path):
    assert "no such file or directory" in _error(tmp_path / "nothing")


# --- dgl.save_graphs files ---------------------------------------------------------

@pytest.fixture(scope="module")
def dgl():
    import dgl as module
    return module


def _dgl_graph(dgl, ref: dict, *, feat_key="feat", label_key="label", mask_dtype=None):
    import torch
    g = dgl.graph((torch.from_numpy(ref["src"].copy()), torch.from_numpy(ref["dst"].copy())),
                  num_nodes=len(ref["label"]))
    g.ndata[feat_key] = torch.from_numpy(ref["feat"].copy())
    g.ndata[label_key] = torch.from_numpy(ref["label"].copy())
    for mask in ("train_mask", "val_mask", "test_mask"):
        if mask in ref:
            values = torch.from_numpy(ref[mask].copy())
            g.ndata[mask] = values.to(mask_dtype) if mask_dtype is not None else values
    return g


def test_dgl_file_round_trip_pubmed(tmp_path, dgl, pubmed_ref):
    import torch
    path = tmp_path / "pubmed.bin"
    other = dgl.graph(([0], [1]))
    dgl.save_graphs(str(path), [_dgl_graph(dgl, pubmed_ref, feat_key="features",
                                           label_key="labels", mask_dtype=torch.uint8), other])
    g = load_graph(str(path))
    _assert_matches(g, pubmed_ref)
    assert (g.name, g.num_nodes, g.num_classes) == ("pubmed", 19717, 3)


def test_dgl_file_round_trip_cora(tmp_path, dgl, cora_ref):
    path = tmp_path / "cora.dgl"
    dgl.save_graphs(str(path), [_dgl_graph(dgl, cora_ref)])
    g = load_graph(str(path))
    _assert_matches(g, cora_ref)
    assert probe_graph(str(path)) == probe_graph(str(CORA)).__class__(
        num_nodes=2708, num_edges=5429, feat_dim=1433, input_bytes=path.stat().st_size,
        exact=True)


def test_not_a_dgl_file(tmp_path):
    path = tmp_path / "g.dgl"
    path.write_bytes(b"\x00" * 64)
    assert "g.dgl: not a file written by dgl.save_graphs" in _error(path)


def test_heterogeneous_dgl_file(tmp_path, dgl):
    import torch
    path = tmp_path / "h.dgl"
    hetero = dgl.heterograph({("a", "x", "b"): (torch.tensor([0]), torch.tensor([0])),
                              ("b", "y", "a"): (torch.tensor([0]), torch.tensor([0]))})
    dgl.save_graphs(str(path), [hetero])
    assert "heterogeneous graph (2 node types, 2 edge types)" in _error(path)


def test_dgl_file_nan_feature(tmp_path, dgl):
    import torch
    g = dgl.graph((torch.tensor([0, 1]), torch.tensor([1, 2])))
    g.ndata["feat"] = torch.tensor([[1.0], [float("nan")], [0.0]])
    path = tmp_path / "n.dgl"
    dgl.save_graphs(str(path), [g])
    assert "ndata 'feat' row 1: feature is NaN or infinite" in _error(path)


def test_dgl_file_float_labels(tmp_path, dgl):
    import torch
    g = dgl.graph((torch.tensor([0, 1]), torch.tensor([1, 2])))
    g.ndata["label"] = torch.tensor([0.5, 1.0, 0.0])
    path = tmp_path / "l.dgl"
    dgl.save_graphs(str(path), [g])
    assert "ndata 'label': must be a 1-D integer tensor" in _error(path)


# --- probing -----------------------------------------------------------------------

@pytest.mark.parametrize("folder", [PUBMED, CORA])
def test_probe_parquet_folder_is_exact(folder):
    g = load_graph(str(folder))
    p = probe_graph(str(folder))
    assert (p.num_nodes, p.num_edges, p.feat_dim, p.exact) == (
        g.num_nodes, g.num_edges, g.feat_dim, True)
    assert p.input_bytes == sum(f.stat().st_size for f in folder.iterdir())


def test_probe_folder_without_nodes_uses_statistics(tmp_path):
    folder = _folder(tmp_path / "g", [0, 9, 3], [4, 1, 2])
    p = probe_graph(str(folder))
    assert (p.num_nodes, p.num_edges, p.feat_dim, p.exact) == (10, 3, 0, True)


def test_probe_small_edge_list_is_exact(tmp_path):
    path = _write_edge_list(tmp_path / "e.csv", [0, 1, 2], [1, 2, 7], header=True)
    p = probe_graph(str(path))
    assert (p.num_nodes, p.num_edges, p.exact, p.input_bytes) == (8, 3, True, path.stat().st_size)


def test_probe_large_edge_list_estimates(tmp_path):
    rng = np.random.default_rng(0)
    n, e = 50_000, 300_000
    src = np.sort(rng.integers(0, n, e))
    dst = rng.integers(0, n, e)
    path = _write_edge_list(tmp_path / "big.txt", src, dst, sep="\t", comments=True)
    assert path.stat().st_size > (1 << 20)
    p = probe_graph(str(path))
    assert not p.exact
    assert abs(p.num_edges - e) < 0.05 * e
    assert abs(p.num_nodes - (max(src.max(), dst.max()) + 1)) < 0.01 * n


def test_probe_synthetic_is_exact():
    p = probe_graph("synthetic:nodes=1000,degree=7,feat_dim=8")
    assert (p.num_nodes, p.num_edges, p.feat_dim, p.input_bytes, p.exact) == (
        1000, 7000, 8, 0, True)


def test_probe_rejects_bad_edges_file(tmp_path):
    table = pa.table({"src": pa.array(["0"]), "dst": pa.array([1], pa.int64())})
    folder = _folder(tmp_path / "g", None, None, edges_table=table)
    with pytest.raises(InputError, match="column 'src' must be an integer type"):
        probe_graph(str(folder))


def test_resolve_spec_kinds(tmp_path):
    (tmp_path / "e.csv").write_text("0,1\n")
    assert resolve_spec(str(tmp_path)).kind == "parquet"
    assert resolve_spec(str(tmp_path / "e.csv")).kind == "edgelist"
    assert resolve_spec("synthetic:nodes=5").kind == "synthetic"


def test_regression_targets_load_with_nan_and_null_as_no_target(tmp_path):
    graph = load_graph(str(_small(tmp_path, target=pa.array([1.5, None, float("nan"), -2.0], pa.float64()))))
    assert graph.target.dtype == np.float32
    assert graph.target[0] == 1.5 and graph.target[3] == -2.0 and np.isnan(graph.target[1:3]).all()


def test_a_non_float_target_column_is_refused(tmp_path):
    assert "column 'target' must be a float type" in _error(_small(tmp_path, target=[1, 2, 3, 4]))


def test_an_infinite_target_names_its_row(tmp_path):
    message = _error(_small(tmp_path, target=[0.0, 1.0, float("inf"), 2.0]))
    assert "column 'target' row 2: target inf is not finite" in message


def test_targets_reach_the_shards_on_both_paths(tmp_path, monkeypatch):
    """In memory and streamed, the shards' nodes.parquet carries the targets of its nodes."""
    from distgnn.partition import budget as budgets
    from distgnn.partition import shards
    from distgnn.partition.run import PartitionConfig, run

    # no interpreter allowance: a small budget streams this small graph
    monkeypatch.setattr(budgets, "BASE_BYTES", 0)
    monkeypatch.setattr(budgets, "MIN_WORK_BYTES", 256 * 1024)
    n = 3000
    rng = np.random.default_rng(0)
    src = rng.integers(0, n, 20000)
    target = rng.normal(size=n).astype(np.float32)
    target[::7] = np.nan
    folder = _folder(tmp_path / "g", src, (src + 1) % n, nodes={"target": pa.array(target)})
    for budget, path in ((None, "in-memory"), (2 * 2**20, "streaming")):
        out = tmp_path / f"out-{path}"
        report = run(PartitionConfig(graph=str(folder), num_parts=2, out=out, quiet=True, memory_budget=budget))
        assert report["memory"]["path"] == path
        assert shards.read_manifest(out).schema.has_target
        got = np.full(n, -1.0, dtype=np.float32)
        for part in range(2):
            nodes = shards.read_part(shards.part_ref(out, part)).nodes
            got[nodes.orig_id] = nodes.target
        np.testing.assert_array_equal(got, target)
