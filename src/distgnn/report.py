"""`distgnn report RUN_DIR`: a PNG of loss, accuracy and throughput per rank over time,
and a summary table, from the run's own run logs (distgnn.runlog), no Prometheus needed."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from distgnn.atomic import atomic_write
from distgnn.cliutil import Parser
from distgnn.errors import InputError
from distgnn.runlog import RankLog, read_run

PROG = "distgnn report"


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    run_dir: Path
    """The run folder (holds logs/rank-NNNNN.jsonl)."""
    out: Path
    """Where the PNG goes."""

    def __post_init__(self) -> None:
        if self.out.suffix.lower() != ".png":
            raise InputError(f"--out {self.out}: the report is a PNG; give a path ending in .png")


@dataclass(frozen=True, kw_only=True)
class RankSummary:
    rank: int
    host: str
    epochs: int
    steps: int
    last_loss: float | None
    best_val: float | None
    best_val_epoch: int | None
    test_at_best_val: float | None
    seeds: int
    seeds_per_s: float | None
    """Seeds over summed step time."""
    wall_s: float
    """From the log's header to its last record."""


def summarize(logs: Sequence[RankLog]) -> list[RankSummary]:
    """One summary row per rank."""
    return [_summarize_rank(log) for log in logs]


def _summarize_rank(log: RankLog) -> RankSummary:
    finished = {e.epoch for e in log.epochs}
    # Step lines of an epoch that never finished (a crash, a run still going) still count.
    unfinished = {}
    for s in log.steps:
        if s.epoch not in finished:
            unfinished[s.epoch] = s
    seeds = sum(e.seeds for e in log.epochs) + sum(s.seeds for s in unfinished.values())
    seconds = sum(e.seconds for e in log.epochs) + sum(s.seconds for s in unfinished.values())
    best_epoch, best_val, test = _best(log)
    last = max(log.steps or log.epochs, key=lambda r: r.time, default=None)
    return RankSummary(
        rank=log.rank,
        host=log.host,
        epochs=len(log.epochs),
        steps=sum(e.steps for e in log.epochs) + sum(s.step for s in unfinished.values()),
        last_loss=None if last is None else last.loss,
        best_val=best_val,
        best_val_epoch=best_epoch,
        test_at_best_val=test,
        seeds=seeds,
        seeds_per_s=seeds / seconds if seconds > 0 else None,
        wall_s=log.end - log.start,
    )


def _best(log: RankLog) -> tuple[int | None, float | None, float | None]:
    """(epoch, val, test) of the best epoch by the task's validation metric (accuracy, mrr, r2)."""
    if log.summary is not None and log.summary.best_epoch >= 0:
        return log.summary.best_epoch, log.summary.best_val_acc, log.summary.test_acc
    best = None
    for record in log.epochs:
        val = record.accuracy.get("val")
        if val is not None and (best is None or val > best.accuracy["val"]):
            best = record
    if best is None:
        return None, None, None
    return best.epoch, best.accuracy["val"], best.accuracy.get("test")


def format_table(rows: Sequence[RankSummary]) -> str:
    """The summary as a fixed-width text table with a total row."""
    header = ("rank", "host", "epochs", "steps", "last loss", "best val", "@epoch", "test", "seeds", "seeds/s", "wall s")
    lines = [header]
    for r in rows:
        lines.append((
            str(r.rank), r.host, str(r.epochs), str(r.steps), _fmt(r.last_loss, ".4f"), _fmt(r.best_val, ".4f"),
            _fmt(r.best_val_epoch, "d"), _fmt(r.test_at_best_val, ".4f"), str(r.seeds), _fmt(r.seeds_per_s, ".1f"),
            f"{r.wall_s:.1f}",
        ))
    rates = [r.seeds_per_s for r in rows if r.seeds_per_s is not None]
    lines.append((
        "total", "", "", "", "", "", "", "", str(sum(r.seeds for r in rows)),
        _fmt(sum(rates) if rates else None, ".1f"), f"{max((r.wall_s for r in rows), default=0.0):.1f}",
    ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def total_throughput(logs: Sequence[RankLog]) -> tuple[np.ndarray, np.ndarray]:
    """Sum of the ranks' seeds/s on the union of their step times (seconds since the
    run's first record); each rank is interpolated inside its own time span and
    counts 0 outside it."""
    t0 = run_start(logs)
    series = [_rank_throughput(log, t0) for log in logs]
    series = [(t, v) for t, v in series if len(t)]
    if not series:
        return np.zeros(0), np.zeros(0)
    grid = np.unique(np.concatenate([t for t, _ in series]))
    total = np.zeros_like(grid)
    for t, v in series:
        inside = (grid >= t[0]) & (grid <= t[-1])
        total[inside] += np.interp(grid[inside], t, v)
    return grid, total


def run_start(logs: Sequence[RankLog]) -> float:
    return min(log.start for log in logs)


def _rank_throughput(log: RankLog, t0: float) -> tuple[np.ndarray, np.ndarray]:
    # Step lines when the trainer wrote them (finer), else one point per epoch.
    records = log.steps or log.epochs
    points = [(r.time - t0, r.seeds_per_s) for r in records if r.seeds_per_s is not None]
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def render_png(logs: Sequence[RankLog], out: Path) -> None:
    """Draw loss, accuracy and throughput per rank over time into `out`, written atomically."""
    # The Agg canvas directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 11), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, acc_ax, tput_ax = fig.subplots(3, 1, sharex=True)
    t0 = run_start(logs)
    for log in logs:
        color = f"C{log.rank % 10}"
        losses = [(r.time - t0, r.loss) for r in (log.steps or log.epochs) if r.loss is not None]
        if losses:
            loss_ax.plot(*zip(*losses), color=color, label=f"rank {log.rank}")
        for split, style in (("train", ":"), ("val", "-"), ("test", "--")):
            points = [(e.time - t0, e.accuracy[split]) for e in log.epochs if e.accuracy.get(split) is not None]
            if points:
                acc_ax.plot(*zip(*points), style, marker="o", color=color, label=f"rank {log.rank} {split}")
        t, v = _rank_throughput(log, t0)
        if len(t):
            tput_ax.plot(t, v, color=color, label=f"rank {log.rank}")
    grid, total = total_throughput(logs)
    if len(grid):
        tput_ax.plot(grid, total, color="black", linewidth=2, label="total")
    job = f" {logs[0].job_id}" if logs[0].job_id else ""
    loss_ax.set(title=f"distgnn run{job}: training loss", ylabel="loss")
    metric = next((e.metric for log in logs for e in log.epochs), "accuracy")
    acc_ax.set(title=f"{metric} after each epoch", ylabel=metric)
    if metric != "r2":  # accuracy and mrr lie in [0, 1]; R² may be far below 0
        acc_ax.set_ylim(0, 1.02)
    tput_ax.set(title="throughput", ylabel="seeds / s", xlabel="seconds since the run started")
    tput_ax.set_ylim(bottom=0)
    for ax in (loss_ax, acc_ax, tput_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", ncols=2)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
    _save(fig, out)


def _save(fig: object, out: Path) -> None:
    try:
        atomic_write(out, lambda stream: fig.savefig(stream, format="png", dpi=100))  # type: ignore[attr-defined]
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write the report ({exc.strerror or exc})") from exc


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=__doc__)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder (reads RUN_DIR/logs/rank-*.jsonl)")
    parser.add_argument("--out", metavar="PNG", help="where to write the plot (default RUN_DIR/report.png)")
    return parser


def config_from_args(argv: Sequence[str] | None) -> ReportConfig:
    args = _parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    return ReportConfig(run_dir=run_dir, out=Path(args.out) if args.out else run_dir / "report.png")


def run(config: ReportConfig) -> str:
    """Render the PNG and return the summary table."""
    logs = read_run(config.run_dir)
    render_png(logs, config.out)
    return format_table(summarize(logs))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = config_from_args(argv)
        table = run(config)
    except InputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(table)
    print(f"plot: {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
