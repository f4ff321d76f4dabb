"""Test accuracy, 1 partition x 1 trainer against 2 partitions x 1 trainer (not a test).

Each configuration trains with the same settings for several seeds through the real
`launch` (one host on this machine; two hosts emulated in network namespaces over ssh) and
reports the test accuracy at the best validation epoch: per seed, the mean, and the gap
between the two. Needs root for the two-host runs.

    python bench/accuracy.py [--graph data/pubmed] [--task node-classification] [--model sage|gcn|gat|M:F]
                             [--seeds 0,1,2] [--one-host-only] [-- EXTRA TRAIN ARGS]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TRAIN = [
    "--fanouts", "10,25", "--eval-fanouts=-1,-1", "--batch-size", "64", "--hidden", "128",
    "--dropout", "0.5", "--lr", "0.01", "--optimizer", "adam", "--weight-decay", "5e-4",
    "--feature-norm", "row", "--epochs", "60", "--eval-every", "1",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LINK_TRAIN = [
    "--task", "link-prediction", "--fanouts", "10,10", "--batch-size", "1000", "--hidden", "128",
    "--dropout", "0.0", "--lr", "0.005", "--negatives", "4", "--feature-norm", "row", "--epochs", "20",
    "--eval-every", "2", "--weight-decay", "0",
]  # fmt: skip
TASKS = {"node-classification": TRAIN, "link-prediction": LINK_TRAIN}
LINK_SPLIT = "0.85,0.05,0.1"


def partition(graph: Path, out: Path, parts: int, task: str) -> Path:
    split = ["--link-split", LINK_SPLIT] if task == "link-prediction" else []
    subprocess.run([Path(PY).parent / "partition", "--graph", graph, "--num-parts", str(parts),
                    "--out", out, "--quiet", *split], check=True)
    return out


def edges_only(graph: Path | str, folder: Path) -> Path:
    """A Parquet graph folder with the graph's edges and nothing else."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from distgnn.graph import load_graph

    g = load_graph(str(graph))
    folder.mkdir()
    pq.write_table(pa.table({"src": g.src, "dst": g.dst}), folder / "edges.parquet")
    (folder / "meta.json").write_text(json.dumps({"name": f"{g.name}-edges", "num_nodes": g.num_nodes}))
    return folder


def train_once(hosts: Path, shards: Path, work: Path, job: str, seed: int, ssh: list[str],
               train: list[str]) -> dict[str, float]:
    from distgnn import runlog

    argv = [PY, "-m", "distgnn.launcher.cli", "--hosts", str(hosts), "--shards", str(shards),
            "--workspace", str(work), "--job-id", job, "--master-port", str(free_port()), "--metrics-port", "0",
            *[f"--ssh-option={o}" for o in ssh], "--", "train", *train, "--seed", str(seed)]
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{job} failed:\n{done.stderr[-3000:]}")
    (log, *_) = runlog.read_run(work / "runs" / job)
    if log.summary.scores:
        return dict(log.summary.scores["test"])
    return {"accuracy": log.summary.test_acc}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--graph", default=str(REPO / "data" / "pubmed"), help="any `partition --graph` source")
    p.add_argument("--task", choices=list(TASKS), default="node-classification")
    p.add_argument("--model", default="sage", help="sage, gcn, gat or package.module:factory (default sage)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--one-host-only", action="store_true", help="skip the two emulated hosts (no root needed)")
    p.add_argument("--edges-only", action="store_true",
                   help="train on the graph's edges alone (no features, labels or masks): with --node-embedding")
    p.add_argument("extra", nargs="*", help="after --: more train arguments (they override the defaults)")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    train = [*TASKS[args.task], "--model", args.model, *args.extra]
    if os.geteuid() != 0 and not args.one_host_only:
        print("bench/accuracy.py: needs root for the emulated second host", file=sys.stderr)
        return 2
    from distgnn.emulation import EmulatedHosts

    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="distgnn-acc-") as tmp:
        work = Path(tmp)
        graph = edges_only(args.graph, work / "edges-only") if args.edges_only else args.graph
        one = partition(graph, work / "p1", 1, args.task)
        local = work / "ip1.txt"
        local.write_text(f"127.0.0.1 {free_port()}\n")
        results["1 partition x 1 trainer"] = [train_once(local, one, work, f"one-{s}", s, [], train) for s in seeds]
        print("1 partition:", results["1 partition x 1 trainer"], flush=True)
        if not args.one_host_only:
            two = partition(graph, work / "p2", 2, args.task)
            with EmulatedHosts(2, sshd=True) as emu:
                pair = work / "ip2.txt"
                pair.write_text("".join(f"{h.address} {free_port()}\n" for h in emu.hosts))
                results["2 partitions x 1 trainer"] = [
                    train_once(pair, two, work, f"two-{s}", s, emu.ssh_options(), train) for s in seeds
                ]
    print(f"\n{Path(args.graph).name}{' (edges only)' if args.edges_only else ''}, {args.task}, --model {args.model} {' '.join(args.extra)}: "
          f"test metrics at the best validation epoch, seeds {seeds}")
    metrics = list(next(iter(results.values()))[0])
    means: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        means[name] = {}
        for metric in metrics:
            values = [r[metric] for r in runs]
            means[name][metric] = sum(values) / len(values)
            print(f"  {name:26} {metric:9} " + "  ".join(f"{v:.3f}" for v in values)
                  + f"   mean {means[name][metric]:.4f}")
    if len(means) == 2:
        a, b = means.values()
        for metric in metrics:
            print(f"  gap (2 partitions - 1 partition) {metric}: {100 * (b[metric] - a[metric]):+.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
