"""Partitioning core: METIS input graph, constraints, assignment, layout, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distgnn.errors import InputError
from distgnn.partition import layout as plan
from distgnn.partition import shards
from distgnn.partition.metis import (
    LIBRARY_ENV, MetisOptions, available_libraries, choose_library, coarsen_to, part_kway,
)
from distgnn.partition.run import PartitionConfig, run
from partition_graphs import pubmed, random_graph


def _partition(graph, out: Path, **kw) -> dict:
    config = PartitionConfig(graph="in-memory", out=out, quiet=True, **{"num_parts": 3, **kw})
    return run(config, load=lambda _spec: graph)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


# ---------------------------------------------------------------- METIS input


def test_symmetric_csr_is_undirected_deduplicated_and_loop_free():
    g = random_graph(num_nodes=50, num_edges=400, seed=1)
    indptr, indices = plan.symmetric_csr(g.src, g.dst, g.num_nodes)
    expected = {(int(s), int(d)) for s, d in zip(g.src, g.dst) if s != d}
    expected |= {(d, s) for s, d in expected}
    got = [(row, int(c)) for row in range(g.num_nodes) for c in indices[indptr[row]:indptr[row + 1]]]
    assert len(got) == len(set(got)), "duplicate adjacency entries"
    assert set(got) == expected
    assert indptr.dtype == np.int32 and indices.dtype == np.int32  # what a 32-bit METIS reads in place
    assert indptr[0] == 0 and indptr[-1] == indices.shape[0]


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_symmetric_csr_on_threads_equals_one_conversion(workers):
    # Slices of the edge list converted apart share rows and duplicate edges: the merge
    # must give exactly the single conversion's pattern, self-loops dropped.
    rng = np.random.default_rng(workers)
    src = rng.integers(0, 300, 4000)
    dst = rng.integers(0, 300, 4000)
    src[:500] = dst[:500]
    src[3000:], dst[3000:] = dst[:1000], src[:1000]  # reversed repeats, in another slice
    one = plan.symmetric_csr(src, dst, 300, workers=1)
    many = plan.symmetric_csr(src, dst, 300, workers=workers)
    assert many[0].dtype == one[0].dtype == np.int32 and many[1].dtype == np.int32
    assert np.array_equal(many[0], one[0]) and np.array_equal(many[1], one[1])


def test_symmetric_csr_keeps_isolated_nodes_and_handles_no_edges():
    indptr, indices = plan.symmetric_csr(np.array([0, 2], np.int64), np.array([2, 2], np.int64), 5)
    assert indptr.tolist() == [0, 1, 1, 2, 2, 2]
    assert indices.tolist() == [2, 0]
    indptr, indices = plan.symmetric_csr(np.zeros(0, np.int64), np.zeros(0, np.int64), 3)
    assert indptr.tolist() == [0, 0, 0, 0] and indices.size == 0


def test_vertex_weights_follow_distdgl_train_columns_and_in_degree():
    g = random_graph(num_nodes=40, num_edges=200, seed=2)
    vwgt, names = plan.vertex_weights(g)
    assert names == ["train_nodes", "other_nodes", "in_edges"]
    train = g.masks["train_mask"]
    assert vwgt[:, 0].tolist() == train.astype(int).tolist()
    assert vwgt[:, 1].tolist() == (~train).astype(int).tolist()
    assert vwgt[:, 2].tolist() == np.bincount(g.dst, minlength=40).tolist()
    no_masks = random_graph(num_nodes=40, num_edges=0, seed=2, masks=False)
    vwgt, names = plan.vertex_weights(no_masks)
    assert names == ["nodes"] and vwgt.shape == (40, 1)  # zero-total degree column dropped


def _two_cliques():
    adj = [[b for b in range(4) if b != a] for a in range(4)] + [[b for b in range(4, 8) if b != a] for a in range(4, 8)]
    adj[3].append(4)
    adj[4].append(3)
    indptr = np.cumsum([0] + [len(a) for a in adj]).astype(np.int64)
    return indptr, np.concatenate(adj).astype(np.int64)


@pytest.fixture(params=[32, 64], ids=["libmetis-32bit", "pymetis-64bit"])
def metis_library(request):
    libraries = {lib.idx_bits: lib for lib in available_libraries()}
    # make test installs Debian's libmetis5 (32-bit ids); pymetis always brings its 64-bit build
    assert set(libraries) == {32, 64}, f"expected a 32-bit and a 64-bit METIS, found {available_libraries()}"
    return libraries[request.param]


def test_metis_honours_every_balance_constraint(metis_library):
    indptr, indices = _two_cliques()
    part, cut = part_kway(indptr, indices, 2, None, MetisOptions(), metis_library)
    assert cut == 1 and len(set(part[:4])) == 1 and len(set(part[4:])) == 1
    # A second constraint that only nodes 0 and 1 carry forces them apart, which the
    # single-constraint cut would never do (pymetis.part_graph drops it silently).
    second = np.array([1, 1, 0, 0, 0, 0, 0, 0], dtype=np.int64)
    vwgt = np.stack([np.ones(8, dtype=np.int64), second], axis=1)
    part, cut = part_kway(indptr, indices, 2, vwgt, MetisOptions(), metis_library)
    assert part[0] != part[1]
    assert cut > 1


def test_both_metis_builds_cut_pubmed_alike(metis_library):
    g = pubmed()
    indptr, indices = plan.symmetric_csr(g.src, g.dst, g.num_nodes)
    vwgt, _ = plan.vertex_weights(g)
    part, cut = part_kway(indptr, indices, 4, vwgt, MetisOptions(), metis_library)
    # METIS bounds each part from above (3% over the mean by default), not from below
    assert part.dtype == np.int64 and np.bincount(part, minlength=4).max() <= 1.05 * g.num_nodes / 4
    directed_cut = int(np.count_nonzero(part[g.src] != part[g.dst]))
    assert directed_cut < 0.15 * g.num_edges  # a random 4-way split cuts 75%


def test_coarsening_target_caps_metis_default_for_big_graphs_only():
    assert coarsen_to(19717, 4, None) == 492  # METIS 5.1: nvtxs / (20 log2 k)
    assert coarsen_to(19717, 4, 250) == 492  # below the cap: unchanged
    assert coarsen_to(2_000_000, 4, None) == 50_000
    assert coarsen_to(2_000_000, 4, 250) == 1000
    assert coarsen_to(2_000_000, 3, 250) == 750  # gk_log2(3) == 1
    assert coarsen_to(100, 4, 250) == 120  # METIS's floor: 30 per part


def test_stepwise_kway_matches_the_public_call_at_metis_own_target(metis_library):
    """Our step-by-step driver is METIS_PartGraphKway itself when given METIS's own target."""
    from distgnn.partition.metis import _kway_stepwise, _options

    assert metis_library.tunable
    g = pubmed()
    indptr, indices = plan.symmetric_csr(g.src, g.dst, g.num_nodes)
    vwgt, _ = plan.vertex_weights(g)
    metis_own = MetisOptions(seed=3, coarsen_per_part=None, initial_tries=None)
    public, public_cut = part_kway(indptr, indices, 4, vwgt, metis_own, metis_library)
    idx = metis_library.dtype
    part = np.empty(g.num_nodes, dtype=idx)
    opts = _options(metis_library, {"SEED": 3, "NITER": 10, "NCUTS": 1, "UFACTOR": -1, "NUMBERING": 0})
    cut = _kway_stepwise(
        metis_library, g.num_nodes, vwgt.shape[1], indptr.astype(idx), indices.astype(idx),
        np.ascontiguousarray(vwgt, dtype=idx), 4, opts, part, coarsen_to(g.num_nodes, 4, None),
    )
    assert cut == public_cut and np.array_equal(part, public)


def test_a_library_whose_ctrl_layout_differs_is_only_called_through_the_public_api(monkeypatch):
    import distgnn.partition.metis as metis

    monkeypatch.setattr(metis, "_CTRL_ENUMS_BYTES", 4 * 7)  # as if a field were added before CoarsenTo
    for lib in available_libraries():
        assert not metis._open(lib.path).tunable
    indptr, indices = _two_cliques()
    lib = metis._open(available_libraries()[0].path)
    part, cut = part_kway(indptr, indices, 2, None, MetisOptions(), lib)
    assert cut == 1


def test_metis_library_choice_prefers_32_bit_and_falls_back_for_big_graphs(monkeypatch, tmp_path):
    assert choose_library(1000, 10_000, 10_000).idx_bits == 32
    assert choose_library(1000, 2**31, 10_000).idx_bits == 64  # too many adjacency entries for int32
    assert choose_library(1000, 10_000, 2**31).idx_bits == 64  # a weight total past int32
    pymetis_build = next(lib for lib in available_libraries() if lib.idx_bits == 64)
    monkeypatch.setenv(LIBRARY_ENV, pymetis_build.path)
    available_libraries.cache_clear()
    try:
        assert choose_library(1000, 10_000, 10_000).idx_bits == 64
        monkeypatch.setenv(LIBRARY_ENV, str(tmp_path / "libnothere.so"))
        available_libraries.cache_clear()
        with pytest.raises(InputError, match=r"DISTGNN_METIS_LIBRARY=.*libnothere\.so: cannot load METIS"):
            available_libraries()
    finally:
        monkeypatch.delenv(LIBRARY_ENV)
        available_libraries.cache_clear()


def test_metis_is_deterministic_under_seed():
    g = pubmed()
    indptr, indices = plan.symmetric_csr(g.src, g.dst, g.num_nodes)
    vwgt, _ = plan.vertex_weights(g)
    a, _ = part_kway(indptr, indices, 4, vwgt, MetisOptions(seed=7))
    b, _ = part_kway(indptr, indices, 4, vwgt, MetisOptions(seed=7))
    assert np.array_equal(a, b)
    assert set(np.unique(a)) == {0, 1, 2, 3}


def test_random_assignment_is_balanced_and_seeded():
    a = plan.random_assignment(1001, 4, seed=3)
    assert np.bincount(a).tolist() == [251, 250, 250, 250]
    assert np.array_equal(a, plan.random_assignment(1001, 4, seed=3))
    assert not np.array_equal(a, plan.random_assignment(1001, 4, seed=4))


def test_fill_empty_parts_moves_one_node_per_empty_part():
    part = np.array([0, 0, 0, 0, 2], dtype=np.int64)
    fixed = plan.fill_empty_parts(part.copy(), 4)
    assert np.bincount(fixed, minlength=4).tolist() == [2, 1, 1, 1]


# ---------------------------------------------------------------- layout


def test_layout_renumbers_by_part_then_original_id_and_orders_edges_by_owner():
    g = random_graph(num_nodes=200, num_edges=1500, seed=5)
    part = plan.random_assignment(g.num_nodes, 3, seed=1)
    lay = plan.plan_layout(part, g.src, g.dst, 3)
    # contiguous ranges, in part order, covering everything
    assert lay.node_ranges[0][0] == 0 and lay.node_ranges[-1][1] == g.num_nodes
    assert all(a[1] == b[0] for a, b in zip(lay.node_ranges, lay.node_ranges[1:]))
    assert lay.edge_ranges[-1][1] == g.num_edges
    # new ids sorted by (part, original id)
    key = part[lay.node_order] * g.num_nodes + lay.node_order
    assert np.all(np.diff(key) > 0)
    assert np.array_equal(lay.new_id[lay.node_order], np.arange(g.num_nodes))
    # each edge id range holds exactly the edges whose destination is in that part,
    # in input order (stable)
    for p, (lo, hi) in enumerate(lay.edge_ranges):
        e = lay.edge_order[lo:hi]
        assert np.all(part[g.dst[e]] == p) and np.all(np.diff(e) > 0)
    cut = part[g.src] != part[g.dst]
    assert lay.num_cut == int(cut.sum())
    for p, (lo, hi) in enumerate(lay.out_ranges):
        e = lay.edge_order[lay.out_edges[lo:hi]]
        assert np.all(part[g.src[e]] == p) and np.all(part[g.dst[e]] != p)


# ---------------------------------------------------------------- whole run


def test_partition_pubmed_report_and_manifest(tmp_path):
    report = _partition(pubmed(), tmp_path / "out", num_parts=4)
    manifest = shards.read_manifest(tmp_path / "out")
    assert manifest.num_parts == 4 and manifest.num_nodes == 19717 and manifest.num_edges == 88648
    stored = manifest.data["report"]
    assert stored["edge_cut"]["count"] == report["edge_cut"]["count"]
    # METIS should do far better than a random 4-way split (75% cut) on a citation graph
    assert 0 < report["edge_cut"]["percent"] < 25
    assert set(report["balance"]) == {"nodes", "edges", "train_nodes", "other_nodes"}
    assert all(1.0 <= b < 1.15 for b in report["balance"].values())
    assert [p["name"] for p in stored["phases"]] == ["load", "csr", "metis", "layout", "write"]
    assert all(p["seconds"] >= 0 and p["peak_rss_bytes"] > 0 for p in stored["phases"])
    assert sum(r["nodes"] for r in report["parts"]) == 19717
    assert sum(r["edges"] for r in report["parts"]) == 88648
    assert sum(r["out_edges"] for r in report["parts"]) == report["edge_cut"]["count"]
    assert manifest.data["versions"]["pymetis"] and manifest.data["versions"]["dgl"]
    assert manifest.data["metis"]["idx_bits"] == 32 and "libmetis" in manifest.data["metis"]["library"]
    assert manifest.data["metis"]["initial_tries"] == 1
    for p in range(4):
        assert f"nodes/part={p}/data.parquet" in manifest.files and f"parts/part-0000{p}.json" in manifest.files


def test_same_seed_gives_identical_shards(tmp_path):
    g = random_graph(num_nodes=500, num_edges=4000, seed=8)
    _partition(g, tmp_path / "a", seed=11)
    _partition(g, tmp_path / "b", seed=11)
    a, b = shards.read_manifest(tmp_path / "a"), shards.read_manifest(tmp_path / "b")
    parquet = [f for f in a.files if f.endswith(".parquet")]
    assert parquet and all(a.files[f] == b.files[f] for f in parquet)


def test_random_method_writes_balanced_parts(tmp_path):
    report = _partition(random_graph(num_nodes=301, num_edges=2000), tmp_path / "r", method="random")
    assert [r["nodes"] for r in report["parts"]] == [101, 100, 100]
    assert shards.read_manifest(tmp_path / "r").data["method"] == "random"


def test_failed_run_with_overwrite_keeps_old_folder_and_leaves_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "out"
    g = random_graph()
    _partition(g, out)
    before = json.loads((out / shards.MANIFEST).read_text())

    def broken(*_args, **_kw):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(shards, "write_manifest", broken)
    with pytest.raises(OSError, match="injected"):
        _partition(g, out, overwrite=True, num_parts=2)
    assert json.loads((out / shards.MANIFEST).read_text()) == before
    assert _leftovers(tmp_path) == []


def test_failed_run_leaves_no_output_and_no_temp(tmp_path, monkeypatch):
    def broken(*_args, **_kw):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(shards, "write_assignment", broken)
    with pytest.raises(OSError):
        _partition(random_graph(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_spilling_arrays_during_metis_changes_nothing(tmp_path, monkeypatch):
    import distgnn.partition.run as run_module

    _partition(random_graph(num_nodes=400, num_edges=3000, seed=9), tmp_path / "kept")
    spilled = random_graph(num_nodes=400, num_edges=3000, seed=9)
    monkeypatch.setattr(run_module, "SPILL_BYTES", 0)
    _partition(spilled, tmp_path / "spilled")
    assert isinstance(spilled.src, np.memmap) and isinstance(spilled.feat, np.memmap)
    a, b = shards.read_manifest(tmp_path / "kept"), shards.read_manifest(tmp_path / "spilled")
    assert a.files == b.files
    assert not any(".spill" in f for f in b.files)


def test_a_metis_failure_while_spilling_leaves_nothing_behind(tmp_path, monkeypatch):
    import distgnn.partition.run as run_module

    def broken(*_args):
        raise MemoryError("no room for METIS")

    monkeypatch.setattr(run_module, "SPILL_BYTES", 0)
    monkeypatch.setattr(run_module, "part_kway", broken)
    with pytest.raises(MemoryError, match="no room"):
        _partition(random_graph(num_nodes=400, num_edges=3000, seed=9), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # the spill thread ended before the staging folder went


def test_a_failed_spill_write_fails_the_run_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import distgnn.partition.run as run_module

    def disk_full(path, *_args, **_kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(run_module, "SPILL_BYTES", 0)
    monkeypatch.setattr(run_module.np, "save", disk_full)
    graph = random_graph(num_nodes=400, num_edges=3000, seed=9)
    # a full disk is one line naming the folder and the file (exit 2 from the CLI)
    with pytest.raises(InputError, match=r"no space left on the device of --out while writing .*src\.npy"):
        _partition(graph, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    assert not isinstance(graph.src, np.memmap)  # nothing was swapped for a half-written copy


def test_progress_lines_on_stderr_for_large_inputs_unless_quiet(tmp_path, monkeypatch):
    import io

    import distgnn.partition.run as run_module

    monkeypatch.setattr(run_module, "LARGE_EDGES", 1000)  # the random graph has 2000 edges
    err, out = io.StringIO(), io.StringIO()
    config = PartitionConfig(graph="mem", num_parts=2, out=tmp_path / "a")
    run(config, load=lambda _s: random_graph(), stderr=err, stdout=out)
    lines = err.getvalue().splitlines()
    assert any(line.startswith("partition: metis") for line in lines)
    assert any("write done in" in line for line in lines)
    assert "edge cut:" in out.getvalue() and "peak RSS GiB" in out.getvalue()
    err, out = io.StringIO(), io.StringIO()
    quiet = PartitionConfig(graph="mem", num_parts=2, out=tmp_path / "b", quiet=True)
    run(quiet, load=lambda _s: random_graph(), stderr=err, stdout=out)
    assert err.getvalue() == "" and out.getvalue() == ""


def test_dry_run_estimate_scales_with_the_input():
    from distgnn.partition.estimate import estimate

    big = estimate(num_nodes=2_000_000, num_edges=20_000_000, feat_dim=64, num_parts=4, method="metis")
    # measured on this graph: 2.7 GiB peak (METIS phase, 32-bit ids), 0.61 GiB of shards
    assert 2.2 * 2**30 < big.peak_memory_bytes < 3.5 * 2**30
    wide = estimate(num_nodes=2_000_000, num_edges=20_000_000, feat_dim=64, num_parts=4, method="metis",
                    metis_id_bytes=8)
    assert 4.5 * 2**30 < wide.peak_memory_bytes < 6.5 * 2**30  # measured: 5.1 GiB with 64-bit ids
    assert 0.55 * 2**30 < big.disk_bytes < 1.0 * 2**30
    rand = estimate(num_nodes=2_000_000, num_edges=20_000_000, feat_dim=64, num_parts=4, method="random")
    assert rand.peak_memory_bytes < 0.7 * big.peak_memory_bytes  # no METIS hierarchy


def test_part_kway_asks_metis_for_the_configured_number_of_initial_partitionings(monkeypatch, metis_library):
    import distgnn.partition.metis as metis

    written = {}
    original = metis._CtrlFields.__setitem__

    def record(self, name, value):
        written[name] = value
        original(self, name, value)

    monkeypatch.setattr(metis._CtrlFields, "__setitem__", record)
    indptr, indices = _two_cliques()
    # None: METIS's rule, 4 when coarsening stops at its floor of 30 nodes a part (as on 8 nodes)
    for tries, expected in ((1, 1), (3, 3), (None, 4)):
        part, cut = part_kway(indptr, indices, 2, None, MetisOptions(initial_tries=tries, coarsen_per_part=1),
                              metis_library)
        assert written["nIparts"] == expected and cut == 1


def test_a_system_libmetis_without_internals_falls_back_to_pymetis_with_one_line(monkeypatch, tmp_path):
    """Debian's libmetis exports METIS 5.1's internals; a build that does not is passed over
    for the METIS inside pymetis, and the report says so."""
    import ctypes.util
    import io

    import distgnn.partition.metis as metis
    from distgnn.partition.report import format_report

    system = ctypes.util.find_library("metis")
    assert system is not None, "make test installs libmetis5 (scripts/install-system-deps.sh)"
    real = metis._bind_internals
    monkeypatch.setattr(metis, "_bind_internals", lambda lib: False if lib.path == system else real(lib))
    available_libraries.cache_clear()
    try:
        (only,) = available_libraries()
        assert only.path.endswith(".so") and "pymetis" in only.path and only.idx_bits == 64
        assert "lacks METIS 5.1's internal entry points" in only.fallback
        report = _partition(random_graph(300, 2000, seed=2), tmp_path / "out")
        assert report["metis"]["library"] == only.path and "pymetis" in report["metis"]["fallback"]
        printed = io.StringIO()
        format_report(report, printed)
        lines = [line for line in printed.getvalue().splitlines() if "internal entry points" in line]
        assert lines == [f"METIS: {system} lacks METIS 5.1's internal entry points (libmetis__SetupCtrl, ...); "
                         "using the METIS inside pymetis"]
    finally:
        available_libraries.cache_clear()
