"""The `partition` console script: exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distgnn.partition import shards

ROOT = Path(__file__).resolve().parents[1]
PARTITION = ROOT / ".venv" / "bin" / "partition"
PUBMED = ROOT / "data" / "pubmed"
SMALL = "synthetic:nodes=500,degree=4,classes=3,feat_dim=4,seed=1"


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    argv = [str(PARTITION)] if PARTITION.exists() else [sys.executable, "-m", "distgnn.partition.cli"]
    return subprocess.run([*argv, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("partition: error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def _nothing_left(parent: Path, name: str = "out") -> None:
    assert not (parent / name).exists()
    assert [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name] == []


def test_partition_pubmed_prints_report_and_writes_shards(tmp_path):
    proc = _run("--graph", PUBMED, "--num-parts", 2, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "edge cut:" in proc.stdout and "balance" in proc.stdout and "metis" in proc.stdout
    manifest = json.loads((tmp_path / "out" / shards.MANIFEST).read_text())
    assert manifest["num_parts"] == 2 and manifest["graph_name"] == "pubmed"
    assert manifest["command"].startswith("partition --graph")
    assert shards.read_part(shards.part_ref(tmp_path / "out", 1)).info.num_nodes == 19717


def test_report_reader_closing_early_is_not_an_error(tmp_path):
    # `partition ... | head -1`: the reader exits after one line, the report's next write
    # hits a closed pipe. The partition is already published by then.
    argv = [str(PARTITION)] if PARTITION.exists() else [sys.executable, "-m", "distgnn.partition.cli"]
    proc = subprocess.Popen([*argv, "--graph", SMALL, "--num-parts", "4", "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, stderr
    assert "Traceback" not in stderr and "Broken pipe" not in stderr
    assert shards.read_part(shards.part_ref(tmp_path / "out", 3)).info.num_parts == 4


@pytest.fixture(scope="module")
def small_partition(tmp_path_factory) -> Path:
    """One finished 2-part partition folder; tests copy it instead of re-running."""
    out = tmp_path_factory.mktemp("base") / "out"
    proc = _run("--graph", SMALL, "--num-parts", 2, "--out", out, "--method", "random", "--seed", 5, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""  # --quiet
    return out


def _copy(small_partition: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(small_partition, tmp_path / "out"))


@pytest.mark.parametrize("parts", ["0", "-3"])
def test_num_parts_below_one(tmp_path, parts):
    proc = _run("--graph", SMALL, "--num-parts", parts, "--out", tmp_path / "out")
    _one_line_error(proc, "--num-parts")
    _nothing_left(tmp_path)


def test_num_parts_above_node_count(tmp_path):
    proc = _run("--graph", SMALL, "--num-parts", 501, "--out", tmp_path / "out")
    _one_line_error(proc, "--num-parts 501", "500 nodes")
    _nothing_left(tmp_path)


def test_existing_output_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = _run("--graph", SMALL, "--num-parts", 2, "--out", out)
    _one_line_error(proc, "--out", "already exists", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_overwrite_that_fails_keeps_the_old_folder(tmp_path, small_partition):
    out = _copy(small_partition, tmp_path)
    before = (out / shards.MANIFEST).read_text()
    proc = _run("--graph", SMALL, "--num-parts", 9999, "--out", out, "--overwrite")
    _one_line_error(proc, "--num-parts")
    assert (out / shards.MANIFEST).read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_overwrite_replaces_the_folder(tmp_path, small_partition):
    out = _copy(small_partition, tmp_path)
    assert _run("--graph", SMALL, "--num-parts", 3, "--out", out, "--quiet", "--overwrite").returncode == 0
    assert shards.read_manifest(out).num_parts == 3
    assert not shards.part_ref(out, 3).info_path.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_unknown_method(tmp_path):
    proc = _run("--graph", SMALL, "--num-parts", 2, "--out", tmp_path / "out", "--method", "spectral")
    _one_line_error(proc, "--method")
    _nothing_left(tmp_path)


def test_bad_graph_source_leaves_nothing(tmp_path):
    proc = _run("--graph", tmp_path / "missing-folder", "--num-parts", 2, "--out", tmp_path / "out")
    _one_line_error(proc, "missing-folder")
    _nothing_left(tmp_path)


def test_dry_run_estimates_and_writes_nothing(tmp_path):
    proc = _run("--graph", PUBMED, "--num-parts", 4, "--out", tmp_path / "out", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "19717 nodes" in proc.stdout and "88648 edges" in proc.stdout
    assert "estimated peak memory" in proc.stdout and "estimated disk space" in proc.stdout
    _nothing_left(tmp_path)


def test_random_method_is_recorded(small_partition):
    manifest = shards.read_manifest(small_partition)
    assert manifest.data["method"] == "random" and manifest.data["seed"] == 5
    assert [p["nodes"] for p in manifest.data["parts"]] == [250, 250]


@pytest.mark.parametrize("budget", [[], ["--memory-budget", "180MiB"]], ids=["in-memory", "streaming"])
def test_a_graph_without_features_or_labels_partitions_and_the_report_says_so(tmp_path, budget):
    """A road network: edges, and a nodes table whose every label is -1 (meta: num_classes 0)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    graph = tmp_path / "roads"
    graph.mkdir()
    rng = np.random.default_rng(0)
    n, m = 100_000, 1_500_000  # big enough that 180 MiB means streaming
    src = rng.integers(0, n, m)
    pq.write_table(pa.table({"src": src, "dst": (src + rng.integers(1, 50, m)) % n}), graph / "edges.parquet")
    pq.write_table(pa.table({"label": np.full(n, -1, dtype=np.int64)}), graph / "nodes.parquet")
    (graph / "meta.json").write_text(json.dumps({"name": "roads", "num_classes": 0}))
    proc = _run("--graph", graph, "--num-parts", 2, "--out", tmp_path / "out", *budget)
    assert proc.returncode == 0, proc.stderr
    assert "node data: no features, no labels (every label is -1), no train/val/test masks" in proc.stdout
    assert ("path: streaming" in proc.stdout) == bool(budget), proc.stdout
    manifest = shards.read_manifest(tmp_path / "out")
    assert manifest.schema.feat_dim == 0 and manifest.schema.num_classes is None
    assert sum(p["nodes"] for p in manifest.data["parts"]) == n


def test_the_report_names_what_a_graph_carries(tmp_path):
    proc = _run("--graph", PUBMED, "--num-parts", 1, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "node data: 500-d features, labels (3 classes), masks train/val/test" in proc.stdout


def test_link_split_keeps_training_edges_and_stores_held_out_pairs(tmp_path):
    proc = _run("--graph", PUBMED, "--num-parts", 2, "--out", tmp_path / "out", "--link-split", "0.85,0.05,0.1",
                "--seed", 7)
    assert proc.returncode == 0, proc.stderr
    assert "link split (seed 7):" in proc.stdout
    manifest = shards.read_manifest(tmp_path / "out")
    split = manifest.data["link_split"]
    assert split["train_edges"] == manifest.num_edges < 88648
    assert set(shards.LINK_FILES.values()) <= set(manifest.files)
    src, dst, neg = shards.read_link_pairs(tmp_path / "out", "test")
    assert src.size == split["test_pairs"] and neg.shape == (src.size, 100)
    assert neg.min() >= 0 and max(src.max(), dst.max(), neg.max()) < 19717
    # a held-out pair is in no part's edges, in either direction
    held = set(zip(src.tolist(), dst.tolist())) | set(zip(dst.tolist(), src.tolist()))
    for part in range(2):
        edges = shards.read_part(shards.part_ref(tmp_path / "out", part)).edges
        assert not held & set(zip(edges.src.tolist(), edges.dst.tolist()))


@pytest.mark.parametrize("args, needle", [
    (["--link-split", "0.9,0.1"], "--link-split '0.9,0.1': expected three non-negative numbers"),
    (["--link-split", "0.98,0.01,0.01", "--graph", "synthetic:nodes=20,degree=1,classes=2,feat_dim=2,seed=0"],
     "--link-split leaves no"),
    (["--link-split", "0.85,0.05,0.1", "--memory-budget", "168MiB", "--graph", str(PUBMED)],
     "--link-split: the split is made in memory"),
])
def test_bad_link_split_is_one_line_and_leaves_nothing(tmp_path, args, needle):
    graph = [] if "--graph" in args else ["--graph", SMALL]
    proc = _run(*graph, "--num-parts", 1, "--out", tmp_path / "out", *args)
    _one_line_error(proc, needle)
    _nothing_left(tmp_path)
