"""A job's own /dev/shm names (distgnn.trainer.shm): tags, the per-job DGL config, the sweep
of dead jobs' segments. The two-jobs-at-once run is in test_cluster.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distgnn.trainer import shm


def test_tags_are_stable_per_run_folder_and_distinct_across_runs():
    a = shm.tag_for("job", Path("/ws/runs/job"))
    assert a == shm.tag_for("job", Path("/ws/runs/job"))
    assert a != shm.tag_for("job", Path("/other/runs/job"))
    assert shm.graph_name("pubmed", a) == f"pubmed-{a}"
    assert shm.graph_name("pubmed", None) == "pubmed"


def test_a_malformed_tag_in_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv(shm.ENV, "../etc")
    with pytest.raises(ValueError, match="DISTGNN_SHM_TAG"):
        shm.current()
    monkeypatch.setenv(shm.ENV, "")
    assert shm.current() is None


def test_job_config_renames_the_graph_and_points_at_the_cached_files(tmp_path):
    cache = tmp_path / "cache" / "pubmed-part0-of-1"
    cache.mkdir(parents=True)
    config = {"graph_name": "pubmed", "num_parts": 1,
              "part-0": {"node_feats": "part0/node_feat.dgl", "part_graph": "part0/graph.dgl"}}
    (cache / "pubmed.json").write_text(json.dumps(config))
    tag = shm.tag_for("j", tmp_path)
    path = shm.job_config(cache / "pubmed.json", tag, tmp_path / "jobs", 0)
    got = json.loads(path.read_text())
    assert path.name == f"pubmed-{tag}-part0.json" and got["graph_name"] == f"pubmed-{tag}"
    assert got["part-0"]["node_feats"] == str(cache.resolve() / "part0" / "node_feat.dgl")
    assert shm.job_config(cache / "pubmed.json", None, tmp_path / "jobs", 0) == cache / "pubmed.json"


def test_sweep_removes_dead_jobs_only(tmp_path):
    live, dead = shm.tag_for("live", tmp_path), shm.tag_for("dead", tmp_path)
    # a live job: its lock is held by another process for as long as it runs
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from distgnn.trainer import shm; "
         f"shm.hold({live!r}, Path({str(tmp_path)!r})); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        files = {}
        for tag in (live, dead):
            files[tag] = [tmp_path / f"{tag}~node~_N~feat-kvdata-", tmp_path / f"pubmed-{tag}_node_meta"]
            for path in files[tag]:
                path.write_bytes(b"x")
        shm.lock_path(dead, tmp_path).write_bytes(b"")
        other = tmp_path / "torch_1234"  # somebody else's segment
        other.write_bytes(b"x")
        assert shm.sweep(tmp_path) == [dead]
        assert not any(p.exists() for p in files[dead]) and not shm.lock_path(dead, tmp_path).exists()
        assert all(p.exists() for p in files[live]) and other.exists()
    finally:
        holder.kill()
        holder.wait()
    assert shm.sweep(tmp_path) == [live], "once its holder is gone the job is dead"
    assert shm.segments_of(live, tmp_path) == []


def test_release_leaves_the_segments_while_another_server_of_the_job_runs(tmp_path):
    tag = shm.tag_for("job", tmp_path)
    first, second = shm.hold(tag, tmp_path), shm.hold(tag, tmp_path)
    segment = tmp_path / f"{tag}~node~_N~label-kvdata-"
    segment.write_bytes(b"x")
    shm.release(tag, first, tmp_path)
    assert segment.exists()
    shm.release(tag, second, tmp_path)
    assert not segment.exists() and not shm.lock_path(tag, tmp_path).exists()


def test_install_prefixes_kvstore_names_once(monkeypatch):
    from dgl.distributed import kvstore

    seen = []
    monkeypatch.setattr(kvstore, "empty_shared_mem", lambda name, *a: seen.append(name))
    tag = shm.tag_for("job", Path("/x"))
    shm.install(tag)
    shm.install(tag)
    kvstore.empty_shared_mem("node~_N~feat-kvdata-", True, (1,), "float32")
    assert seen == [f"{tag}~node~_N~feat-kvdata-"]
