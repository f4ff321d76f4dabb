"""The run log: one JSON-lines file per trainer rank, written while training, read by `distgnn report`.

This module is the only owner of the format: it writes and reads it.

Location: `RUN_DIR/logs/rank-00000.jsonl` (log_path), one file per global rank, beside
the launcher's process logs (`RUN_DIR/logs/<host>-<role>-<rank>.log`).

Format (version 1): one JSON object per line; every line has `kind`, `time` (Unix
seconds) and `rank`:

- `header`: `format` ("distgnn-runlog"), `version` (1), `host`, `job_id`. Always line 1.
- `step`, written every few steps: `epoch`, `step` (steps done in this epoch), `loss`
  (of that step), `seeds` and `seconds` (seeds trained on and wall time since the epoch
  started), `seeds_per_s` (throughput since the previous step line of the epoch, or
  since the epoch started).
- `epoch`, one per finished epoch: `epoch`, `loss` (mean over its steps), `seeds`,
  `steps`, `seconds`, `seeds_per_s`, `lr`, `phases` (seconds per step phase, summed),
  `accuracy` ({"train"?, "val"?, "test"?}: the task's metric on the splits evaluated after
  it; accuracy for node classification), and for other tasks `metric` (its name, e.g.
  "mrr") and `scores` ({split: {metric: value}}: every metric, e.g. auc, mrr, hits@10).
- `message`: `text` (early stop, where predictions went, ...).
- `summary`, once at the end of training: `best_epoch`, `best_val_acc`, `test_acc` (the
  task's metric), `epochs`, `param_digest`, and for other tasks `metric` and `scores`.

Numbers that are not finite (a diverged loss, an accuracy over no nodes) are written as
JSON null. Each line is written and flushed whole; a final line without a newline (the
process was killed mid-write) is ignored when reading.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

from distgnn.errors import InputError

FORMAT = "distgnn-runlog"
VERSION = 1
SPLITS = ("train", "val", "test")
_LOG_NAME = re.compile(r"^rank-(\d{5,})\.jsonl$")


def logs_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The folder holding a run's run logs."""
    return Path(run_dir) / "logs"


def log_path(run_dir: str | os.PathLike[str], rank: int) -> Path:
    """The run log of one global rank."""
    return logs_dir(run_dir) / f"rank-{rank:05d}.jsonl"


def _number(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def write_line(stream: TextIO, line: str) -> None:
    """`line` and its newline in one write, flushed.

    The trainers of a host share torchrun's unbuffered stdout and stderr: print() writes the
    newline separately, and two trainers' lines once ran together, hiding one of them from
    the launcher. One write of a line shorter than PIPE_BUF reaches a pipe whole."""
    stream.write(line + "\n")
    stream.flush()


class RunLogWriter:
    """Appends one rank's records; `echo` also prints each record as a progress line."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        rank: int,
        host: str,
        job_id: str,
        echo: bool = False,
        clock: Callable[[], float] = time.time,
        stream: TextIO | None = None,
    ) -> None:
        self.path = Path(path)
        self.rank = rank
        self._echo = stream if stream is not None else sys.stdout if echo else None
        self._clock = clock
        # Throughput between step lines: (epoch, seeds, seconds) at the previous line.
        self._previous = (-1, 0, 0.0)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out: TextIO = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"run log {self.path}: cannot write it ({exc.strerror or exc})") from exc
        self._write("header", format=FORMAT, version=VERSION, host=host, job_id=job_id)

    def _write(self, kind: str, **fields: Any) -> None:
        record = {"kind": kind, "time": self._clock(), "rank": self.rank, **fields}
        self._out.write(json.dumps(record, allow_nan=False) + "\n")
        self._out.flush()

    def _say(self, text: str) -> None:
        if self._echo is not None:
            write_line(self._echo, f"[rank {self.rank}] {text}")

    def step(self, *, epoch: int, step: int, loss: float, seeds: int, seconds: float) -> None:
        """A progress line: `seeds` and `seconds` count from the start of the epoch."""
        _, last_seeds, last_seconds = self._previous if self._previous[0] == epoch else (epoch, 0, 0.0)
        interval = seconds - last_seconds
        rate = (seeds - last_seeds) / interval if interval > 0 else None
        self._previous = (epoch, seeds, seconds)
        self._write("step", epoch=epoch, step=step, loss=_number(loss), seeds=seeds, seconds=seconds, seeds_per_s=rate)
        self._say(f"epoch {epoch} step {step} loss {loss:.4f} " + (f"{rate:.0f} seeds/s" if rate else ""))

    def epoch(
        self,
        *,
        epoch: int,
        loss: float,
        seeds: int,
        steps: int,
        seconds: float,
        seeds_per_s: float | None = None,
        lr: float | None = None,
        phases: Mapping[str, float] | None = None,
        train_acc: float | None = None,
        val_acc: float | None = None,
        test_acc: float | None = None,
        metric: str = "accuracy",
        scores: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        """One finished epoch; the task's metric (`metric`, accuracy for node classification)
        only for the splits evaluated after it, and with `scores` every metric of them."""
        accuracy = {s: _number(v) for s, v in (("train", train_acc), ("val", val_acc), ("test", test_acc)) if v is not None}
        if seeds_per_s is None and seconds > 0:
            seeds_per_s = seeds / seconds
        extra = {} if metric == "accuracy" else {"metric": metric}
        if scores:
            extra["scores"] = {s: {k: _number(v) for k, v in m.items()} for s, m in scores.items()}
        self._write(
            "epoch", epoch=epoch, loss=_number(loss), seeds=seeds, steps=steps, seconds=seconds,
            seeds_per_s=_number(seeds_per_s), lr=_number(lr),
            phases={k: float(v) for k, v in (phases or {}).items()}, accuracy=accuracy, **extra,
        )
        name = "acc" if metric == "accuracy" else metric
        shown = " ".join(f"{k} {name} {v:.4f}" for k, v in accuracy.items() if v is not None)
        if scores:
            shown += "".join(f" | {s} " + " ".join(f"{k} {v:.4f}" for k, v in m.items()) for s, m in scores.items())
        self._say(f"epoch {epoch} done in {seconds:.1f}s: loss {loss:.4f} {shown}".rstrip())

    def message(self, text: str) -> None:
        self._write("message", text=text)
        self._say(text)

    def summary(self, *, best_epoch: int, best_val_acc: float, test_acc: float, epochs: int, param_digest: str,
                metric: str = "accuracy", scores: Mapping[str, Mapping[str, float]] | None = None) -> None:
        """The end of training: the best epoch by the validation metric and its test value
        (best_val_acc and test_acc hold the task's metric; `scores` all of them)."""
        extra = {} if metric == "accuracy" else {"metric": metric}
        if scores:
            extra["scores"] = {s: {k: _number(v) for k, v in m.items()} for s, m in scores.items()}
        self._write(
            "summary", best_epoch=best_epoch, best_val_acc=_number(best_val_acc), test_acc=_number(test_acc),
            epochs=epochs, param_digest=param_digest, **extra,
        )
        name = "acc" if metric == "accuracy" else metric
        self._say(f"best epoch {best_epoch}: val {name} {best_val_acc:.4f}, test {name} {test_acc:.4f}")

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> "RunLogWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullRunLog:
    """A run log that writes nothing (no run folder)."""

    def step(self, *, epoch: int, step: int, loss: float, seeds: int, seconds: float) -> None:
        pass

    def epoch(
        self,
        *,
        epoch: int,
        loss: float,
        seeds: int,
        steps: int,
        seconds: float,
        seeds_per_s: float | None = None,
        lr: float | None = None,
        phases: Mapping[str, float] | None = None,
        train_acc: float | None = None,
        val_acc: float | None = None,
        test_acc: float | None = None,
        metric: str = "accuracy",
        scores: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def summary(self, *, best_epoch: int, best_val_acc: float, test_acc: float, epochs: int, param_digest: str,
                metric: str = "accuracy", scores: Mapping[str, Mapping[str, float]] | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "NullRunLog":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


NULL_RUN_LOG = NullRunLog()


def open_run_log(
    run_dir: str | os.PathLike[str] | None,
    *,
    rank: int,
    echo: bool = False,
    host: str | None = None,
    job_id: str = "",
) -> RunLogWriter | NullRunLog:
    """The run log of `rank` under `run_dir`, or the null log without a run folder."""
    if run_dir is None:
        return NULL_RUN_LOG
    return RunLogWriter(log_path(run_dir, rank), rank=rank, host=host or socket.gethostname(), job_id=job_id, echo=echo)


# ---------------------------------------------------------------- reading

@dataclass(frozen=True, kw_only=True)
class StepRecord:
    time: float
    epoch: int
    step: int
    loss: float | None
    seeds: int
    seconds: float
    seeds_per_s: float | None


@dataclass(frozen=True, kw_only=True)
class EpochRecord:
    time: float
    epoch: int
    loss: float | None
    seeds: int
    steps: int
    seconds: float
    seeds_per_s: float | None
    lr: float | None
    phases: Mapping[str, float]
    accuracy: Mapping[str, float | None]
    """The task's metric per evaluated split (accuracy for node classification)."""
    metric: str = "accuracy"
    scores: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SummaryRecord:
    time: float
    best_epoch: int
    best_val_acc: float | None
    test_acc: float | None
    epochs: int
    param_digest: str
    metric: str = "accuracy"
    scores: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)


@dataclass(kw_only=True)
class RankLog:
    """Everything one rank's run log holds."""

    path: Path
    rank: int
    host: str
    job_id: str
    start: float
    """Time of the header line."""
    steps: list[StepRecord] = field(default_factory=list)
    epochs: list[EpochRecord] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    summary: SummaryRecord | None = None

    @property
    def end(self) -> float:
        """Time of the last record."""
        times = [self.start, *(s.time for s in self.steps), *(e.time for e in self.epochs)]
        if self.summary is not None:
            times.append(self.summary.time)
        return max(times)


def read_run(run_dir: str | os.PathLike[str]) -> list[RankLog]:
    """Read every rank's run log of a run, ordered by rank."""
    if not Path(run_dir).is_dir():
        raise InputError(f"run folder {run_dir}: not a directory")
    folder = logs_dir(run_dir)
    paths = [p for p in folder.glob("rank-*.jsonl") if _LOG_NAME.match(p.name)] if folder.is_dir() else []
    if not paths:
        raise InputError(f"run folder {run_dir}: no run logs ({folder}/rank-NNNNN.jsonl)")
    return sorted((read_rank_log(p) for p in paths), key=lambda log: log.rank)


def read_rank_log(path: str | os.PathLike[str]) -> RankLog:
    """Read one rank's run log; InputError naming the file and line on a bad line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"run log {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from exc
    # After the last newline: "" for a complete file, else a line torn by a killed writer.
    lines = text.split("\n")[:-1]
    if not lines:
        raise InputError(f"run log {path}: empty (no header line)")
    log = _header(path, _parse_line(path, 1, lines[0]))
    for number, line in enumerate(lines[1:], start=2):
        record = _parse_line(path, number, line)
        try:
            _add(log, record)
        except KeyError as exc:
            raise InputError(f"run log {path}: line {number}: bad {record.get('kind')!s} record "
                             f"(missing field {exc.args[0]!r})") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"run log {path}: line {number}: bad {record.get('kind')!s} record ({exc})") from exc
    return log


def _parse_line(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"run log {path}: line {number} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(record, dict):
        raise InputError(f"run log {path}: line {number}: expected a JSON object")
    return record


def _header(path: Path, record: dict[str, Any]) -> RankLog:
    if record.get("kind") != "header" or record.get("format") != FORMAT:
        raise InputError(f"run log {path}: line 1: not a {FORMAT} header")
    if record.get("version") != VERSION:
        raise InputError(f"run log {path}: line 1: format version {record.get('version')!r}; this distgnn reads {VERSION}")
    try:
        return RankLog(path=path, rank=int(record["rank"]), host=str(record["host"]),
                       job_id=str(record["job_id"]), start=float(record["time"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"run log {path}: line 1: bad header ({exc})") from exc


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def _scores(value: Any) -> dict[str, dict[str, float | None]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(m, dict) for m in value.values()):
        raise ValueError("scores must map splits to {metric: number}")
    return {str(s): {str(k): _optional(v) for k, v in m.items()} for s, m in value.items()}


def _add(log: RankLog, record: dict[str, Any]) -> None:
    kind = record["kind"]
    if int(record["rank"]) != log.rank:
        raise ValueError(f"rank {record['rank']} in the log of rank {log.rank}")
    if kind == "step":
        log.steps.append(StepRecord(
            time=float(record["time"]), epoch=int(record["epoch"]), step=int(record["step"]),
            loss=_optional(record["loss"]), seeds=int(record["seeds"]), seconds=float(record["seconds"]),
            seeds_per_s=_optional(record["seeds_per_s"]),
        ))
    elif kind == "epoch":
        accuracy = record["accuracy"]
        if not isinstance(accuracy, dict) or set(accuracy) - set(SPLITS):
            raise ValueError(f"accuracy must map {', '.join(SPLITS)} to numbers")
        log.epochs.append(EpochRecord(
            time=float(record["time"]), epoch=int(record["epoch"]), loss=_optional(record["loss"]),
            seeds=int(record["seeds"]), steps=int(record["steps"]), seconds=float(record["seconds"]),
            seeds_per_s=_optional(record["seeds_per_s"]), lr=_optional(record["lr"]),
            phases={str(k): float(v) for k, v in record["phases"].items()},
            accuracy={k: _optional(v) for k, v in accuracy.items()},
            metric=str(record.get("metric", "accuracy")), scores=_scores(record.get("scores")),
        ))
    elif kind == "message":
        log.messages.append(str(record["text"]))
    elif kind == "summary":
        log.summary = SummaryRecord(
            time=float(record["time"]), best_epoch=int(record["best_epoch"]),
            best_val_acc=_optional(record["best_val_acc"]), test_acc=_optional(record["test_acc"]),
            epochs=int(record["epochs"]), param_digest=str(record["param_digest"]),
            metric=str(record.get("metric", "accuracy")), scores=_scores(record.get("scores")),
        )
    else:
        raise ValueError(f"unknown kind {kind!r}")
