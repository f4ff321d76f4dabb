"""`partition --memory-budget`: the streaming path, coarsening, and what a budget refuses.

In-process runs set the interpreter's modelled size (budget.BASE_BYTES) to 0, so a
budget of a few MiB is "the room left for work" and small graphs take every
out-of-core path; the CLI tests use real budgets.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distgnn.errors import InputError
from distgnn.graph import load_graph
from distgnn.partition import budget, shards
from distgnn.partition.run import PartitionConfig, run
from clusterutil import small_tmpfs
from partition_graphs import PUBMED
from test_partition_cli import _nothing_left, _one_line_error, _run
from test_to_dgl import _check_against_input

CORA = PUBMED.parent / "cora"
SYNTH = "synthetic:nodes=6000,degree=8,classes=4,feat_dim=8,seed=3"
MiB = 2**20


@pytest.fixture()
def no_base(monkeypatch):
    monkeypatch.setattr(budget, "BASE_BYTES", 0)
    monkeypatch.setattr(budget, "MIN_WORK_BYTES", 256 * 1024)


def _part(spec, out: Path, num_parts: int, mib: float | None = None, **kw) -> dict:
    config = PartitionConfig(graph=str(spec), num_parts=num_parts, out=out, quiet=True,
                             memory_budget=None if mib is None else int(mib * MiB), **kw)
    return run(config)


def _tables(root: Path) -> dict[str, pa.Table]:
    files = shards.read_manifest(root).files
    return {rel: pq.read_table(root / rel) for rel in sorted(files) if rel.endswith(".parquet")}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".partial-" in p.name)


# ---------------------------------------------------------------- sizes and plans


@pytest.mark.parametrize("text, expected", [
    ("768MiB", 768 * MiB), ("16GiB", 16 * 2**30), ("4G", 4 * 2**30), ("1.5GB", 1_500_000_000),
    ("1000000", 1_000_000), (" 512 m ", 512 * MiB),
])
def test_sizes_parse_in_binary_and_decimal_units(text, expected):
    assert budget.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "12 parsecs", "-5GiB", "0", "0MiB"])
def test_bad_sizes_name_the_flag(text):
    with pytest.raises(InputError, match="--memory-budget"):
        budget.parse_size(text)


def test_plan_keeps_graphs_that_fit_in_memory_and_streams_the_rest():
    kw = dict(num_nodes=2_000_000, num_edges=20_000_000, feat_dim=64, num_parts=4, method="metis")
    roomy = budget.plan(budget=64 * 2**30, **kw)
    assert roomy.path == "in-memory" and roomy.temp_disk_bytes == 0
    tight = budget.plan(budget=1 * 2**30, **kw)
    assert tight.path == "streaming" and tight.peak_bytes <= 1 * 2**30 and tight.coarsen
    assert tight.temp_disk_bytes > 16 * kw["num_edges"]
    assert tight.chunk_edges * budget.PASS_BYTES_PER_EDGE <= tight.work_bytes
    with pytest.raises(InputError, match=r"below the floor of \d+MiB .*2000000 nodes"):
        budget.plan(budget=200 * MiB, **kw)


def test_papers100m_shaped_plan_fits_16_gib():
    p = budget.plan(budget=16 * 2**30, num_nodes=111_059_956, num_edges=1_615_685_872, feat_dim=128,
                    num_parts=8, method="metis")
    assert p.path == "streaming" and p.coarsen and p.peak_bytes <= 16 * 2**30
    assert p.in_memory_peak_bytes > 10 * p.budget_bytes


# ---------------------------------------------------------------- the streaming path


def test_streaming_with_whole_graph_metis_writes_the_in_memory_shards(tmp_path, no_base):
    memory = _part(PUBMED, tmp_path / "a", 3)
    streamed = _part(PUBMED, tmp_path / "b", 3, mib=40)
    assert memory["memory"]["path"] == "in-memory"
    assert streamed["memory"]["path"] == "streaming" and "coarsening" not in streamed
    a, b = _tables(tmp_path / "a"), _tables(tmp_path / "b")
    assert list(a) == list(b)
    for rel in a:
        assert a[rel].equals(b[rel]), rel
    ma, mb = shards.read_manifest(tmp_path / "a"), shards.read_manifest(tmp_path / "b")
    assert (ma.node_ranges, ma.edge_ranges, ma.schema) == (mb.node_ranges, mb.edge_ranges, mb.schema)
    assert memory["edge_cut"] == streamed["edge_cut"]
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("spec, num_parts, mib", [(PUBMED, 4, 9), (CORA, 3, 1.1), (SYNTH, 4, 5)])
def test_coarsened_partition_keeps_the_shard_contract(tmp_path, no_base, spec, num_parts, mib):
    reference = _part(spec, tmp_path / "ref", num_parts)
    report = _part(spec, tmp_path / "shards", num_parts, mib=mib)
    assert report["memory"]["path"] == "streaming"
    coarse = report["coarsening"]
    assert coarse["levels"] and coarse["coarse_nodes"] < report["num_nodes"]
    assert [p["name"] for p in report["phases"]] == [
        "read", "degrees", "adjacency", "coarsen", "metis", "refine", "layout", "write"]
    # the price of coarsening: a cut close to METIS on the whole graph, same balance limits
    assert report["edge_cut"]["count"] <= 1.3 * reference["edge_cut"]["count"]
    assert all(b < 1.1 for b in report["balance"].values()), report["balance"]
    assert coarse["refined_cut"] <= coarse["projected_cut"]
    graph = load_graph(str(spec))
    _check_against_input(graph, tmp_path / "shards", num_parts, tmp_path / "dgl")
    for p in range(num_parts):
        shards.read_part(shards.part_ref(tmp_path / "shards", p))  # checksums hold
    assert _leftovers(tmp_path) == []


def test_random_method_streams_too(tmp_path, no_base):
    report = _part(SYNTH, tmp_path / "out", 3, mib=5, method="random", seed=4)
    assert report["memory"]["path"] == "streaming"
    assert [p["name"] for p in report["phases"]] == ["read", "degrees", "assign", "layout", "write"]
    graph = load_graph(SYNTH)
    _check_against_input(graph, tmp_path / "out", 3, tmp_path / "dgl")


def test_edge_list_input_streams_with_line_numbers_for_bad_rows(tmp_path, no_base):
    path = tmp_path / "g.tsv"
    rng = np.random.default_rng(0)
    edges = rng.integers(0, 3000, (40_000, 2))
    np.savetxt(path, edges, fmt="%d", delimiter="\t")
    report = _part(path, tmp_path / "out", 2, mib=5)
    assert report["memory"]["path"] == "streaming" and report["num_edges"] == 40_000
    # a negative id on the very last line: found only after the last batch
    with path.open("a") as f:
        f.write("17\t-4\n")
    with pytest.raises(InputError, match=r"g\.tsv line 40001 \(dst\): node id -4 is negative"):
        _part(path, tmp_path / "bad", 2, mib=5)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "bad").exists()


def _copy_graph(tmp_path: Path, name: str = "graph") -> Path:
    folder = tmp_path / name
    shutil.copytree(PUBMED, folder)
    return folder


def test_bad_id_in_the_last_parquet_batch_is_named_and_leaves_nothing(tmp_path, no_base):
    folder = _copy_graph(tmp_path)
    edges = pq.read_table(folder / "edges.parquet")
    dst = edges.column("dst").to_numpy().copy()
    dst[-1] = 19717  # one past the last node, in the last row
    pq.write_table(pa.table({"src": edges.column("src"), "dst": dst}), folder / "edges.parquet",
                   row_group_size=10_000)
    with pytest.raises(InputError, match=r"edges\.parquet: column 'dst' row 88647: node id 19717 is out of range"):
        _part(folder, tmp_path / "out", 2, mib=5)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


def test_bad_label_in_the_last_parquet_batch_is_named(tmp_path, no_base):
    folder = _copy_graph(tmp_path)
    nodes = pq.read_table(folder / "nodes.parquet")
    label = nodes.column("label").to_numpy().copy()
    label[-1] = 7  # PubMed has 3 classes (meta.json)
    nodes = nodes.set_column(nodes.schema.get_field_index("label"), "label", pa.array(label))
    pq.write_table(nodes, folder / "nodes.parquet", row_group_size=2_000)
    with pytest.raises(InputError, match=r"nodes\.parquet: column 'label' row 19716: label 7 is not below"):
        _part(folder, tmp_path / "out", 2, mib=5)
    assert _leftovers(tmp_path) == []


def test_synthetic_pieces_spill_the_same_arrays_as_generate(tmp_path):
    from distgnn.graph import synthetic
    from distgnn.graph.spilled import SpillWriter

    spec = "synthetic:nodes=3000,degree=5,classes=3,feat_dim=6,seed=9"
    whole = synthetic.generate(synthetic.parse_spec(spec))
    spilled = synthetic.spill_synthetic(spec, SpillWriter(tmp_path / "s"), rows=100)
    src = np.concatenate([s for _i, s, _d in spilled.edges(777)])
    dst = np.concatenate([d for _i, _s, d in spilled.edges(777)])
    np.testing.assert_array_equal(src, whole.src)
    np.testing.assert_array_equal(dst, whole.dst)
    batches = list(spilled.nodes(1000))
    np.testing.assert_array_equal(np.concatenate([b.feat for b in batches]), whole.feat)
    np.testing.assert_array_equal(np.concatenate([b.label for b in batches]), whole.label)
    for name, mask in whole.masks.items():
        np.testing.assert_array_equal(np.concatenate([b.masks[name] for b in batches]), mask)


def test_disk_full_in_the_middle_is_one_error_and_leaves_nothing(tmp_path, no_base, monkeypatch):
    from distgnn.graph import spilled

    writes = {"n": 0}
    real = spilled.append

    def fills_up(path, array):
        writes["n"] += 1
        if writes["n"] > 12:
            raise OSError(28, "No space left on device", str(path))
        real(path, array)

    monkeypatch.setattr(spilled, "append", fills_up)
    for module in ("distgnn.partition.adjacency", "distgnn.partition.streaming"):
        monkeypatch.setattr(f"{module}.append", fills_up)
    with pytest.raises(InputError, match=r"no space left on the device of --tmp-dir while writing .*\.tmp-"):
        _part(PUBMED, tmp_path / "out", 2, mib=5)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


def test_progress_prints_plain_lines_off_a_terminal(tmp_path, no_base, monkeypatch):
    import io

    from distgnn.partition import progress

    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    err = io.StringIO()
    config = PartitionConfig(graph=str(PUBMED), num_parts=2, out=tmp_path / "out", memory_budget=9 * MiB)
    run(config, stderr=err, stdout=io.StringIO())
    text = err.getvalue()
    assert "partition: read:" in text and "partition: split edges:" in text and "edges/s" in text
    assert "partition: write nodes: 19,717/19,717 nodes (100%)" in text


def test_phase_peaks_leave_the_whole_run_peak_alone():
    from distgnn.partition.report import PhaseMeter, run_peak_bytes

    block = np.ones(200 * MiB, dtype=np.uint8)  # touched: resident
    del block
    meter = PhaseMeter()
    with meter.phase("small"):
        np.ones(MiB, dtype=np.uint8)
    assert run_peak_bytes() >= 200 * MiB  # the kernel's figure was not reset
    assert meter.phases[0].peak_rss_bytes < run_peak_bytes()


# ---------------------------------------------------------------- the command line


def test_cli_streams_pubmed_within_a_real_budget_and_reports_it(tmp_path):
    proc = _run("--graph", PUBMED, "--num-parts", 2, "--out", tmp_path / "out", "--memory-budget", "168MiB")
    assert proc.returncode == 0, proc.stderr
    assert "path: streaming through disk (coarsen, METIS, project, refine)" in proc.stdout
    assert "coarsening:" in proc.stdout and "peak RSS (whole run)" in proc.stdout
    data = shards.read_manifest(tmp_path / "out").data["report"]
    assert data["memory"]["budget_bytes"] == 168 * MiB and data["memory"]["path"] == "streaming"
    assert _leftovers(tmp_path) == []


def test_cli_budget_below_the_floor_is_one_line(tmp_path):
    proc = _run("--graph", PUBMED, "--num-parts", 2, "--out", tmp_path / "out", "--memory-budget", "100MiB")
    _one_line_error(proc, "--memory-budget 100MiB is below the floor of")
    _nothing_left(tmp_path)


def test_cli_bad_budget_and_missing_tmp_dir(tmp_path):
    proc = _run("--graph", PUBMED, "--num-parts", 2, "--out", tmp_path / "out", "--memory-budget", "plenty")
    _one_line_error(proc, "--memory-budget 'plenty'")
    proc = _run("--graph", PUBMED, "--num-parts", 2, "--out", tmp_path / "out", "--memory-budget", "180MiB",
                "--tmp-dir", tmp_path / "nowhere")
    _one_line_error(proc, "--tmp-dir", "nowhere")
    _nothing_left(tmp_path)


def test_dry_run_prints_the_plan_for_a_budget(tmp_path):
    proc = _run("--graph", "synthetic:nodes=30000000,degree=10,feat_dim=32", "--num-parts", 4,
                "--out", tmp_path / "out", "--dry-run", "--memory-budget", "4GiB")
    assert proc.returncode == 0, proc.stderr
    assert "path: streaming through disk (coarsen, METIS, project, refine)" in proc.stdout
    assert "estimated temporary disk space" in proc.stdout
    peak = next(line for line in proc.stdout.splitlines() if line.startswith("estimated peak memory"))
    assert peak.endswith("GiB") and float(peak.split()[-2]) <= 4.0
    _nothing_left(tmp_path)


@pytest.fixture()
def small_disk(tmp_path):
    """A 2 MiB file system."""
    with small_tmpfs(tmp_path / "small", "2m") as mount:
        yield mount


def test_a_temporary_disk_too_small_is_refused_before_anything_is_written(tmp_path, small_disk):
    proc = _run("--graph", PUBMED, "--num-parts", 2, "--out", tmp_path / "out", "--memory-budget", "180MiB",
                "--tmp-dir", small_disk)
    _one_line_error(proc, str(small_disk), "free, the run needs about")
    assert list(small_disk.iterdir()) == []
    _nothing_left(tmp_path)
    proc = _run("--graph", PUBMED, "--num-parts", 2, "--out", tmp_path / "out", "--memory-budget", "180MiB",
                "--tmp-dir", small_disk, "--dry-run")
    _one_line_error(proc, str(small_disk))


def test_shards_onto_a_full_disk_are_refused_in_one_line(tmp_path, small_disk):
    proc = _run("--graph", PUBMED, "--num-parts", 2, "--out", small_disk / "out")
    _one_line_error(proc, str(small_disk), "free, the run needs about")
    assert list(small_disk.iterdir()) == []


def test_a_disk_that_fills_up_while_writing_shards_is_one_line(tmp_path, small_disk, monkeypatch):
    """The free-space check passed (estimates can be low), then the disk filled: one line, nothing left."""
    from distgnn.partition import run as run_module

    monkeypatch.setattr(run_module, "check_disk_space", lambda *_args: None)
    with pytest.raises(InputError, match=r"no space left on the device of --out while writing"):
        _part(PUBMED, small_disk / "out", 2)
    assert list(small_disk.iterdir()) == []


def test_a_dgl_file_too_big_to_load_whole_is_refused_saying_why(tmp_path, no_base):
    import dgl
    import torch

    rng = np.random.default_rng(0)
    g = dgl.graph((torch.from_numpy(rng.integers(0, 5000, 60_000)), torch.from_numpy(rng.integers(0, 5000, 60_000))),
                  num_nodes=5000)
    g.ndata["feat"] = torch.randn(5000, 16)
    path = tmp_path / "g.dgl"
    dgl.save_graphs(str(path), [g])
    size_mib = path.stat().st_size / MiB
    with pytest.raises(InputError, match=r"g\.dgl: DGL loads a saved graph whole, .*convert it to a Parquet graph folder"):
        _part(path, tmp_path / "out", 2, mib=2.2 * size_mib)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "out").exists()
    # with room to load it whole, it is partitioned
    report = _part(path, tmp_path / "ok", 2, mib=5 * size_mib)
    assert report["num_nodes"] == 5000 and report["num_edges"] == 60_000
