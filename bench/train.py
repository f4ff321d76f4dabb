"""Trainer benchmark (not a test): our `train` against a DGL-example-style baseline, side by side.

Both run in the same emulated cluster (2 hosts in network namespaces, 1 graph server and
1 trainer each, reached over ssh by `launch`), on the same Parquet shards of a synthetic graph,
with the same fanouts, batch size and hidden size. Prints seeds/s per trainer, epoch time and
validation accuracy for both, and the ratios. Needs root (network namespaces).

    python bench/train.py                      # 2,000,000 nodes / 20,000,000 edges, 64-d
    python bench/train.py --nodes 200000       # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PY = sys.executable
BIN = Path(PY).parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_shards(work: Path, nodes: int, degree: int, feat_dim: int) -> Path:
    spec = f"synthetic:nodes={nodes},degree={degree},classes=16,feat_dim={feat_dim},seed=0"
    out = work / f"shards-{nodes}-{degree}-{feat_dim}"
    if not (out / "manifest.json").exists():
        print(f"partitioning {spec} into 2 parts ...", flush=True)
        subprocess.run([BIN / "partition", "--graph", spec, "--num-parts", "2", "--out", out, "--quiet"], check=True)
    return out


def launch(hosts, shards: Path, work: Path, job: str, ssh: list[str], *, trainer_module: str | None,
           train: list[str]) -> subprocess.CompletedProcess:
    argv = [
        PY, "-m", "distgnn.launcher.cli", "--hosts", str(hosts), "--shards", str(shards),
        "--workspace", str(work), "--job-id", job, "--master-port", str(free_port()), "--metrics-port", "0",
        *[f"--ssh-option={o}" for o in ssh],
    ]  # fmt: skip
    if trainer_module:
        argv += ["--trainer-module", trainer_module, "--env", f"PYTHONPATH={BENCH}"]
    argv += ["--", "train", *train]
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def ours(run_dir: Path) -> dict:
    from distgnn import runlog

    logs = runlog.read_run(run_dir)
    last = [log.epochs[-1] for log in logs]
    val = next(e.accuracy.get("val") for e in last if e.accuracy.get("val") is not None)
    return {
        "seeds_per_s_per_trainer": sum(e.seeds_per_s for e in last) / len(last),
        "epoch_s": sum(e.seconds for e in last) / len(last),
        "val_acc": val,
        "phases": {k: round(sum(e.phases.get(k, 0.0) for e in last) / len(last), 2) for k in last[0].phases},
    }


def baseline(stdout: str) -> dict:
    lines = [json.loads(line.split("] ", 1)[-1]) for line in stdout.splitlines() if '"baseline_epoch"' in line]
    if not lines:
        raise RuntimeError("the baseline printed no epoch line:\n" + stdout[-3000:])
    return lines[-1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=2_000_000)
    p.add_argument("--degree", type=int, default=10)
    p.add_argument("--feat-dim", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2, help="epochs per side; the last one is reported")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "bench-train")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/train.py: needs root to emulate 2 hosts (network namespaces)", file=sys.stderr)
        return 2

    from distgnn.emulation import EmulatedHosts

    args.work.mkdir(parents=True, exist_ok=True)
    shards = make_shards(args.work, args.nodes, args.degree, args.feat_dim)
    common = ["--fanouts", "10,25", "--batch-size", "1000", "--hidden", "256", "--epochs", str(args.epochs)]
    # The baseline's optimisation (Adam, constant lr 0.003, no decay, no clipping), for equal accuracy.
    same_optimizer = ["--eval-every", str(args.epochs), "--lr", "0.003", "--optimizer", "adam",
                      "--weight-decay", "0", "--warmup-epochs", "0", "--min-lr-ratio", "1", "--clip-norm", "0"]
    results = {}
    with EmulatedHosts(2, sshd=True) as emu:
        hosts = args.work / "ip_config.txt"
        hosts.write_text("".join(f"{h.address} {free_port()}\n" for h in emu.hosts))
        for name, module, extra in [
            ("baseline (DGL example style)", "baseline_dgl_sage", []),
            ("distgnn train", None, [*same_optimizer, "--prefetch", "2"]),
            ("distgnn train, no prefetch", None, [*same_optimizer, "--prefetch", "0"]),
        ]:
            job = f"bench-{len(results)}-{int(time.time())}"
            t0 = time.monotonic()
            done = launch(hosts, shards, args.work, job, emu.ssh_options(), trainer_module=module,
                          train=[*common, *extra])
            wall = time.monotonic() - t0
            if done.returncode != 0:
                print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
                return 1
            results[name] = baseline(done.stdout) if module else ours(args.work / "runs" / job)
            results[name]["launch_wall_s"] = wall
            print(f"{name}: {json.dumps(results[name])}", flush=True)

    base = results["baseline (DGL example style)"]
    print()
    print(f"graph: synthetic {args.nodes:,} nodes, ~{args.nodes * args.degree:,} edges, {args.feat_dim}-d; "
          f"2 emulated hosts x 1 trainer; fanouts 10,25; batch 1000; hidden 256; epoch {args.epochs} of {args.epochs}")
    print(f"{'':32}{'seeds/s/trainer':>16}{'epoch s':>10}{'val acc':>9}{'x baseline':>12}")
    for name, r in results.items():
        ratio = r["seeds_per_s_per_trainer"] / base["seeds_per_s_per_trainer"]
        print(f"{name:32}{r['seeds_per_s_per_trainer']:>16.0f}{r['epoch_s']:>10.2f}{r['val_acc']:>9.3f}{ratio:>11.2f}x")
    for name, r in results.items():
        if "phases" in r:
            print(f"{name}: seconds per epoch and trainer by phase {r['phases']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
