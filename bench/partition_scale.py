"""`partition --memory-budget`: what bounding memory costs, and how far it scales.

    python bench/partition_scale.py [--quality] [--scale] [--plan] [--scale-nodes N]

Each run is the `partition` command in a child process; its wall time and peak RSS
come from outside (os.wait4's ru_maxrss: the child's own high-water mark as the
kernel kept it). Cut, balance, phases, coarsening and temporary disk come from the
manifest the run wrote.

--quality  2M nodes / 20M edges / 64-d into 4 parts: in memory (METIS on the whole
           graph) against a budget small enough to force coarsening, side by side.
--scale    --scale-nodes (30M) nodes x 10 edges / 32-d into 4 parts with --memory-budget
           4GiB, against a random partition's expected cut (1 - 1/k of the edges), and
           its time per edge against the in-memory path's on --ref-nodes (10M) nodes.
--plan     the dry run of an ogbn-papers100M-shaped graph (111M nodes, 1.6B edges,
           128-d) under --memory-budget 16GiB.
With no flag, all three.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTITION = [sys.executable, "-m", "distgnn.partition.cli"]
QUALITY = "synthetic:nodes=2000000,degree=10,classes=16,feat_dim=64,seed=0"
QUALITY_BUDGET = "1GiB"


def run_partition(args: list[str], out: Path) -> dict:
    """Run `partition`; returns wall seconds, peak RSS (from outside) and the manifest's report."""
    start = time.perf_counter()
    proc = subprocess.Popen([*PARTITION, *args, "--out", str(out), "--quiet"], stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"partition {' '.join(args)} failed:\n{err}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "report": manifest["report"],
            "num_edges": manifest["num_edges"]}


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def describe(name: str, r: dict) -> None:
    rep = r["report"]
    bal = ", ".join(f"{k} {v:.3f}" for k, v in rep["balance"].items())
    mem = rep.get("memory", {})
    print(f"  {name:<10} wall {r['wall_s']:7.1f} s   peak RSS {gib(r['peak_rss_bytes'])}   "
          f"cut {rep['edge_cut']['count']:,} ({rep['edge_cut']['percent']:.2f}%)   path {mem.get('path')}")
    print(f"  {'':<10} balance: {bal}")
    coarse = rep.get("coarsening")
    if coarse:
        levels = "; ".join(f"{lv['nodes']:,} nodes in {lv['seconds']:.1f} s" for lv in coarse["levels"])
        print(f"  {'':<10} coarsening: {levels}; cut {coarse['projected_cut']:,} projected -> "
              f"{coarse['refined_cut']:,} refined (undirected)")
    if rep.get("temp_disk_bytes"):
        print(f"  {'':<10} temporary disk: {gib(rep['temp_disk_bytes'])}")
    phases = ", ".join(f"{p['name']} {p['seconds']:.1f}s" for p in rep["phases"])
    print(f"  {'':<10} phases: {phases}")


def quality(work: Path, parts: int) -> None:
    print(f"== quality price: {QUALITY} into {parts} parts")
    common = ["--graph", QUALITY, "--num-parts", str(parts)]
    memory = run_partition(common, work / "memory")
    shutil.rmtree(work / "memory")
    bounded = run_partition([*common, "--memory-budget", QUALITY_BUDGET], work / "bounded")
    shutil.rmtree(work / "bounded")
    describe("in-memory", memory)
    describe(f"budget {QUALITY_BUDGET}", bounded)
    ratio = bounded["report"]["edge_cut"]["count"] / memory["report"]["edge_cut"]["count"]
    print(f"  cut ratio bounded / in-memory: {ratio:.3f}x (goal <= 1.10x); wall ratio "
          f"{bounded['wall_s'] / memory['wall_s']:.2f}x; peak RSS ratio "
          f"{bounded['peak_rss_bytes'] / memory['peak_rss_bytes']:.2f}x")


def scale(work: Path, parts: int, nodes: int, ref_nodes: int, budget: str) -> None:
    spec = f"synthetic:nodes={nodes},degree=10,classes=16,feat_dim=32,seed=0"
    print(f"== scale: {spec} into {parts} parts, --memory-budget {budget}")
    big = run_partition(["--graph", spec, "--num-parts", str(parts), "--memory-budget", budget], work / "big")
    shutil.rmtree(work / "big")
    describe("bounded", big)
    random_cut = big["num_edges"] * (1 - 1 / parts)
    print(f"  cut against a random partition's expected {random_cut:,.0f}: "
          f"{big['report']['edge_cut']['count'] / random_cut:.3f}x")
    if ref_nodes:
        ref_spec = f"synthetic:nodes={ref_nodes},degree=10,classes=16,feat_dim=64,seed=0"
        ref = run_partition(["--graph", ref_spec, "--num-parts", str(parts)], work / "ref")
        shutil.rmtree(work / "ref")
        describe("in-memory", ref)
        per_big = big["wall_s"] / big["num_edges"]
        per_ref = ref["wall_s"] / ref["num_edges"]
        print(f"  time per edge: bounded {per_big * 1e6:.2f} us, in-memory ({ref_nodes:,} nodes) "
              f"{per_ref * 1e6:.2f} us: {per_big / per_ref:.2f}x (goal <= 2x)")


def plan(work: Path) -> None:
    spec = "synthetic:nodes=111059956,degree=15,classes=172,feat_dim=128,seed=0"
    print(f"== plan: papers100M-shaped ({spec}) into 8 parts, --memory-budget 16GiB")
    proc = subprocess.run([*PARTITION, "--graph", spec, "--num-parts", "8", "--out", str(work / "papers"),
                           "--dry-run", "--memory-budget", "16GiB"], capture_output=True, text=True)
    print("  " + (proc.stdout + proc.stderr).strip().replace("\n", "\n  "))
    print(f"  exit code {proc.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--scale", action="store_true")
    parser.add_argument("--plan", action="store_true")
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--scale-nodes", type=int, default=30_000_000)
    parser.add_argument("--ref-nodes", type=int, default=10_000_000,
                        help="nodes of the in-memory reference for time per edge (0: skip)")
    parser.add_argument("--scale-budget", default="4GiB")
    parser.add_argument("--work", type=Path, default=None, help="folder for outputs (default: a temp folder)")
    args = parser.parse_args()
    everything = not (args.quality or args.scale or args.plan)
    work = Path(tempfile.mkdtemp(prefix="partition-scale-", dir=args.work))
    try:
        if everything or args.plan:
            plan(work)
        if everything or args.quality:
            quality(work, args.parts)
        if everything or args.scale:
            scale(work, args.parts, args.scale_nodes, args.ref_nodes, args.scale_budget)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
