"""Time distgnn's train_step in fp32, bf16 and fp16 on saved or fake sampled batches.

Nothing here imports dgl, so it runs on a GPU machine where DGL cannot be
installed. Batches are sampled elsewhere (on CPU, with DGL), converted to
LayerGraphs and written with save_batches; or --make-fake builds random ones
of realistic size (batch 1000, fanouts 10,25, 64-d features by default).

    PYTHONPATH=src python bench/gpu_step.py --make-fake
    PYTHONPATH=src python bench/gpu_step.py --make-fake --save /tmp/fake.pt
    PYTHONPATH=src python bench/gpu_step.py --batches /tmp/fake.pt --precisions bf16,fp16

Host-to-device copies are done once before timing; the numbers are the
model's forward, backward and optimizer step only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import distgnn  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from distgnn.errors import InputError
from distgnn.trainer.model import GraphSAGE, LayerGraph
from distgnn.trainer.step import (
    Precision,
    make_grad_scaler,
    make_optimizer,
    move_batch,
    train_step,
)

FORMAT = "distgnn-gpu-batches"
VERSION = 1

Batch = tuple[list[LayerGraph], torch.Tensor, torch.Tensor]


def save_batches(path: str | Path, batches: list[Batch]) -> None:
    """Write batches as plain tensors and ints, loadable with weights_only=True on any torch."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "batches": [{"layers": [layer.state() for layer in layers], "x": x, "y": y} for layers, x, y in batches],
    }
    torch.save(payload, path)


def load_batches(path: str | Path) -> list[Batch]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a damaged file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"--batches: cannot read {path}: {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise InputError(f"--batches: {path} is not a {FORMAT} v{VERSION} file")
    return [([LayerGraph.from_state(s) for s in b["layers"]], b["x"], b["y"]) for b in payload["batches"]]


def fake_batch(
    gen: torch.Generator, *, labels: torch.Tensor, centroids: torch.Tensor, batch_size: int, fanouts: list[int]
) -> Batch:
    """Uniform neighbour sampling on a random graph, fanouts listed input layer first as in DGL."""
    num_nodes = labels.numel()
    seeds = torch.randperm(num_nodes, generator=gen)[:batch_size]
    frontier = seeds
    local = torch.full((num_nodes,), -1, dtype=torch.int64)
    layers: list[LayerGraph] = []
    for fanout in reversed(fanouts):
        num_dst = frontier.numel()
        picked = torch.randint(0, num_nodes, (num_dst * fanout,), generator=gen)
        local.fill_(-1)
        local[frontier] = torch.arange(num_dst)
        # New source nodes go after the destinations, which are the first source nodes.
        new = torch.unique(picked[local[picked] < 0])
        local[new] = torch.arange(num_dst, num_dst + new.numel())
        dst = torch.arange(num_dst).repeat_interleave(fanout)
        frontier = torch.cat([frontier, new])
        layers.insert(0, LayerGraph(local[picked], dst, frontier.numel(), num_dst))
    x = centroids[labels[frontier]] + torch.randn(frontier.numel(), centroids.shape[1], generator=gen)
    return layers, x, labels[seeds]


def make_fake_batches(
    *, num_batches: int, batch_size: int, fanouts: list[int], feat_dim: int, num_nodes: int, num_classes: int, seed: int
) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_nodes,), generator=gen)
    centroids = torch.randn(num_classes, feat_dim, generator=gen)
    return [
        fake_batch(gen, labels=labels, centroids=centroids, batch_size=batch_size, fanouts=fanouts)
        for _ in range(num_batches)
    ]


@dataclass(frozen=True, kw_only=True)
class Row:
    precision: str
    step_ms: float
    forward_ms: float
    backward_ms: float
    optimizer_ms: float
    seeds_per_s: float
    peak_mib: float
    first_loss: float
    last_loss: float


def bench_precision(
    batches: list[Batch], precision: Precision, device: torch.device, *, hidden: int, num_classes: int, steps: int, warmup: int
) -> Row:
    torch.manual_seed(0)
    layers0, x0, _ = batches[0]
    model = GraphSAGE(x0.shape[1], hidden, num_classes, len(layers0), dropout=0.5).to(device)
    optimizer = make_optimizer(model, lr=3e-3, weight_decay=5e-4)
    scaler = make_grad_scaler(precision, device)
    on_device = [move_batch(layers, x, y, device) for layers, x, y in batches]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    results = []
    for i in range(warmup + steps):
        layers, x, y = on_device[i % len(on_device)]
        results.append(train_step(model, optimizer, scaler, layers, x, y, precision=precision, clip_norm=1.0))
    timed = results[warmup:]
    seeds = sum(on_device[i % len(on_device)][2].numel() for i in range(warmup, warmup + steps))
    total_s = sum(r.timings.total_s for r in timed)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return Row(
        precision=precision.value,
        step_ms=1e3 * statistics.median(r.timings.total_s for r in timed),
        forward_ms=1e3 * statistics.median(r.timings.forward_s for r in timed),
        backward_ms=1e3 * statistics.median(r.timings.backward_s for r in timed),
        optimizer_ms=1e3 * statistics.median(r.timings.optimizer_s for r in timed),
        seeds_per_s=seeds / total_s,
        peak_mib=peak,
        first_loss=results[0].loss,
        last_loss=results[-1].loss,
    )


def format_table(rows: list[Row], skipped: list[str]) -> str:
    header = f"{'precision':<9} {'step ms':>8} {'fwd ms':>8} {'bwd ms':>8} {'opt ms':>8} {'seeds/s':>10} {'peak MiB':>9} {'loss first->last':>18}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.precision:<9} {r.step_ms:8.2f} {r.forward_ms:8.2f} {r.backward_ms:8.2f} {r.optimizer_ms:8.2f} "
            f"{r.seeds_per_s:10.0f} {r.peak_mib:9.1f} {r.first_loss:8.4f}->{r.last_loss:<8.4f}"
        )
    lines.extend(f"{name:<9} skipped: {why}" for name, why in (s.split(":", 1) for s in skipped))
    return "\n".join(lines)


def describe(batches: list[Batch]) -> str:
    layers, x, y = batches[0]
    sizes = " <- ".join(f"{l.num_dst} dst/{l.num_edges} edges" for l in reversed(layers))
    return f"{len(batches)} batches; first: {y.numel()} seeds, {x.shape[0]} input nodes x {x.shape[1]} features; {sizes}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_step", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--batches", type=Path, help="file written by save_batches")
    src.add_argument("--make-fake", action="store_true", help="build random batches of realistic size")
    p.add_argument("--save", type=Path, help="with --make-fake: also write the batches here")
    p.add_argument("--num-batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--fanouts", default="10,25", help="input layer first, as in DGL")
    p.add_argument("--feat-dim", type=int, default=64)
    p.add_argument("--num-nodes", type=int, default=200_000, help="size of the fake graph")
    p.add_argument("--num-classes", type=int, default=16)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--precisions", default="fp32,bf16,fp16")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    try:
        fanouts = [int(f) for f in args.fanouts.split(",")]
    except ValueError:
        print(f"gpu_step: error: --fanouts: expected integers like 10,25, got {args.fanouts!r}", file=sys.stderr)
        return 2
    try:
        if args.make_fake:
            t0 = time.perf_counter()
            batches = make_fake_batches(
                num_batches=args.num_batches, batch_size=args.batch_size, fanouts=fanouts, feat_dim=args.feat_dim,
                num_nodes=args.num_nodes, num_classes=args.num_classes, seed=0,
            )
            print(f"built fake batches in {time.perf_counter() - t0:.1f} s")
            if args.save:
                save_batches(args.save, batches)
        else:
            batches = load_batches(args.batches)
        num_classes = max(args.num_classes, max(int(y.max()) + 1 for _, _, y in batches))
        rows, skipped = [], []
        for name in args.precisions.split(","):
            try:
                precision = Precision.parse(name, device)
            except InputError as exc:
                skipped.append(f"{name}:{exc}")
                continue
            rows.append(bench_precision(batches, precision, device, hidden=args.hidden, num_classes=num_classes,
                                        steps=args.steps, warmup=args.warmup))
    except InputError as exc:
        print(f"gpu_step: error: {exc}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, hidden {args.hidden}, {args.steps} timed steps after {args.warmup}")
    print(describe(batches))
    print(format_table(rows, skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
