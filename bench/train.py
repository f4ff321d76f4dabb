"""Trainer benchmark (not a test): our `train` against a DGL-example-style baseline, side by side.

Both run in the same emulated cluster (2 hosts in network namespaces, 1 graph server and
1 trainer each, reached over ssh by `launch`), on the same Parquet shards of a synthetic graph,
with the same fanouts, batch size and hidden size. Prints seeds/s per trainer, epoch time and
validation accuracy for both, and the ratios. Needs root (network namespaces).

Four configurations run in turn, --repeats times (ABCDABCD, so a noisy stretch of the machine
hits all of them): the baseline as DGL's example runs (glibc malloc), our `train` as `launch`
starts it (tcmalloc preloaded, remote-feature cache on), ours without the cache, and the
baseline given tcmalloc too, to show how much of the difference is the allocator. Each run's
figure is the mean over its epochs after the first; the table shows the mean over repeats.

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
           allocator: str, train: list[str]) -> subprocess.CompletedProcess:
    argv = [
        PY, "-m", "distgnn.launcher.cli", "--hosts", str(hosts), "--shards", str(shards),
        "--workspace", str(work), "--job-id", job, "--master-port", str(free_port()), "--metrics-port", "0",
        "--allocator", allocator, *[f"--ssh-option={o}" for o in ssh],
    ]  # fmt: skip
    if trainer_module:
        argv += ["--trainer-module", trainer_module, "--env", f"PYTHONPATH={BENCH}"]
    argv += ["--", "train", *train]
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def ours(run_dir: Path) -> dict:
    from distgnn import runlog

    logs = runlog.read_run(run_dir)
    epochs = [log.epochs[1:] or log.epochs for log in logs]  # the first epoch warms caches up
    flat = [e for per_rank in epochs for e in per_rank]
    val = next(e.accuracy.get("val") for e in logs[0].epochs[::-1] if e.accuracy.get("val") is not None)
    return {
        "seeds_per_s_per_trainer": sum(e.seeds_per_s for e in flat) / len(flat),
        "epoch_s": sum(e.seconds for e in flat) / len(flat),
        "val_acc": val,
        "phases": {k: round(sum(e.phases.get(k, 0.0) for e in flat) / len(flat), 2) for k in flat[0].phases},
    }


def baseline(stdout: str) -> dict:
    lines = [json.loads(line.split("] ", 1)[-1]) for line in stdout.splitlines() if '"baseline_epoch"' in line]
    if not lines:
        raise RuntimeError("the baseline printed no epoch line:\n" + stdout[-3000:])
    later = lines[1:] or lines
    return {
        "seeds_per_s_per_trainer": sum(x["seeds_per_s_per_trainer"] for x in later) / len(later),
        "epoch_s": sum(x["epoch_s"] for x in later) / len(later),
        "val_acc": lines[-1]["val_acc"],
    }


def average(runs: list[dict]) -> dict:
    keys = ("seeds_per_s_per_trainer", "epoch_s", "val_acc")
    out = {k: sum(r[k] for r in runs) / len(runs) for k in keys}
    out["runs"] = [round(r["seeds_per_s_per_trainer"]) for r in runs]
    if "phases" in runs[0]:
        out["phases"] = {k: round(sum(r["phases"][k] for r in runs) / len(runs), 2) for k in runs[0]["phases"]}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=2_000_000)
    p.add_argument("--degree", type=int, default=10)
    p.add_argument("--feat-dim", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not counted")
    p.add_argument("--repeats", type=int, default=2, help="runs of each configuration, interleaved")
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
    configs = [
        ("baseline (DGL example, glibc)", "baseline_dgl_sage", "system", []),
        ("distgnn train (launch default)", None, "tcmalloc", same_optimizer),
        ("distgnn train, no feature cache", None, "tcmalloc", [*same_optimizer, "--feature-cache-mb", "0"]),
        ("baseline + tcmalloc", "baseline_dgl_sage", "tcmalloc", []),
    ]
    runs: dict[str, list[dict]] = {name: [] for name, *_ in configs}
    with EmulatedHosts(2, sshd=True) as emu:
        hosts = args.work / "ip_config.txt"
        hosts.write_text("".join(f"{h.address} {free_port()}\n" for h in emu.hosts))
        for repeat in range(args.repeats):
            for name, module, allocator, extra in configs:
                job = f"bench-{repeat}-{len(runs[name])}-{int(time.time())}"
                done = launch(hosts, shards, args.work, job, emu.ssh_options(), trainer_module=module,
                              allocator=allocator, train=[*common, *extra])
                if done.returncode != 0:
                    print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
                    return 1
                result = baseline(done.stdout) if module else ours(args.work / "runs" / job)
                runs[name].append(result)
                print(f"{name} (run {repeat + 1}): {json.dumps(result)}", flush=True)

    results = {name: average(r) for name, r in runs.items()}
    base = results[configs[0][0]]
    print()
    print(f"graph: synthetic {args.nodes:,} nodes, ~{args.nodes * args.degree:,} edges, {args.feat_dim}-d; "
          f"2 emulated hosts x 1 trainer; fanouts 10,25; batch 1000; hidden 256; "
          f"epochs 2-{args.epochs} of {args.repeats} runs each")
    print(f"{'':34}{'seeds/s/trainer':>16}{'epoch s':>10}{'val acc':>9}{'x baseline':>12}  runs")
    for name, r in results.items():
        ratio = r["seeds_per_s_per_trainer"] / base["seeds_per_s_per_trainer"]
        print(f"{name:34}{r['seeds_per_s_per_trainer']:>16.0f}{r['epoch_s']:>10.2f}{r['val_acc']:>9.3f}"
              f"{ratio:>11.2f}x  {r['runs']}")
    for name, r in results.items():
        if "phases" in r:
            print(f"{name}: seconds per epoch and trainer by phase {r['phases']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
