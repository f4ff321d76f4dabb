"""distgnn.runlog (write, read) and `distgnn report RUN_DIR` (PNG + summary table)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from distgnn import report, runlog
from distgnn.errors import InputError


class Clock:
    """A settable clock so the records' times are known."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def write_rank(run_dir: Path, rank: int, *, slow: float = 1.0, epochs: int = 3, diverge: bool = False) -> None:
    """What a trainer of `rank` writes: 4 step lines per epoch (64 seeds per step, 0.1 s x slow each),
    an epoch line with accuracies, and a summary."""
    clock = Clock(1000.0)
    with runlog.RunLogWriter(runlog.log_path(run_dir, rank), rank=rank, host=f"h{rank}", job_id="job-9",
                             clock=clock) as log:
        for epoch in range(epochs):
            for step in range(1, 5):
                clock.now += 0.1 * slow
                loss = float("nan") if diverge and epoch == epochs - 1 else 1.0 / (epoch * 4 + step)
                log.step(epoch=epoch, step=step, loss=loss, seeds=64 * step, seconds=0.1 * slow * step)
            val = 0.5 + 0.1 * epoch
            log.epoch(epoch=epoch, loss=0.5 / (epoch + 1), seeds=256, steps=4, seconds=0.4 * slow,
                      lr=0.01, phases={"sample": 0.1, "forward": 0.2}, val_acc=val, test_acc=val - 0.05)
        log.message("done")
        log.summary(best_epoch=epochs - 1, best_val_acc=0.5 + 0.1 * (epochs - 1),
                    test_acc=0.45 + 0.1 * (epochs - 1), epochs=epochs, param_digest="ab12")


# ------------------------------------------------------------------ run log

def test_run_log_round_trip(tmp_path: Path) -> None:
    write_rank(tmp_path, 0)
    (log,) = runlog.read_run(tmp_path)
    assert (log.rank, log.host, log.job_id, log.start) == (0, "h0", "job-9", 1000.0)
    assert len(log.steps) == 12 and len(log.epochs) == 3 and log.messages == ["done"]
    first = log.steps[0]
    assert (first.epoch, first.step, first.seeds, first.loss) == (0, 1, 64, 1.0)
    # Throughput between consecutive step lines: 64 seeds in 0.1 s, and it restarts each epoch.
    assert all(s.seeds_per_s == pytest.approx(640.0) for s in log.steps)
    epoch = log.epochs[1]
    assert epoch.accuracy == {"val": pytest.approx(0.6), "test": pytest.approx(0.55)}
    assert epoch.seeds_per_s == pytest.approx(640.0) and epoch.phases == {"sample": 0.1, "forward": 0.2}
    assert log.summary is not None and log.summary.best_epoch == 2 and log.summary.param_digest == "ab12"


def test_non_finite_numbers_are_written_as_null(tmp_path: Path) -> None:
    write_rank(tmp_path, 0, diverge=True)
    lines = runlog.log_path(tmp_path, 0).read_text().splitlines()
    assert all("NaN" not in line for line in lines)  # strict JSON, readable by any tool
    (log,) = runlog.read_run(tmp_path)
    assert log.steps[-1].loss is None and log.steps[0].loss == 1.0


def test_echo_prints_progress(tmp_path: Path) -> None:
    out = io.StringIO()
    with runlog.RunLogWriter(tmp_path / "r.jsonl", rank=0, host="h", job_id="j", stream=out) as log:
        log.step(epoch=0, step=20, loss=0.25, seeds=1000, seconds=2.0)
        log.epoch(epoch=0, loss=0.3, seeds=1000, steps=20, seconds=2.0, val_acc=0.8)
    assert out.getvalue().splitlines() == [
        "[rank 0] epoch 0 step 20 loss 0.2500 500 seeds/s",
        "[rank 0] epoch 0 done in 2.0s: loss 0.3000 val acc 0.8000",
    ]


def test_no_run_folder_means_the_null_log() -> None:
    assert runlog.open_run_log(None, rank=0) is runlog.NULL_RUN_LOG


def test_open_run_log_writes_under_the_run_folder(tmp_path: Path) -> None:
    log = runlog.open_run_log(tmp_path, rank=12, host="h3", job_id="j")
    log.close()
    assert (tmp_path / "logs" / "rank-00012.jsonl").is_file()


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    write_rank(tmp_path, 0)
    path = runlog.log_path(tmp_path, 0)
    with open(path, "a") as out:
        out.write('{"kind": "step", "time": 20')  # the writer was killed mid-line
    (log,) = runlog.read_run(tmp_path)
    assert len(log.steps) == 12


@pytest.mark.parametrize("line, message", [
    ('{"kind": "step", "time": 1', r"line 2 column \d+: "),
    ('[1, 2]', r"line 2: expected a JSON object"),
    ('{"kind": "epoch", "time": 1, "rank": 0}', r"line 2: bad epoch record \(missing field 'accuracy'\)"),
    ('{"kind": "bogus", "time": 1, "rank": 0}', r"line 2: bad bogus record \(unknown kind 'bogus'\)"),
    ('{"kind": "message", "time": 1, "rank": 4, "text": "x"}', r"line 2: bad message record \(rank 4 in the log of rank 0\)"),
])
def test_bad_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = runlog.log_path(tmp_path, 0)
    runlog.RunLogWriter(path, rank=0, host="h", job_id="j").close()
    with open(path, "a") as out:
        out.write(line + "\n")
    with pytest.raises(InputError, match=re.escape(f"run log {path}: ") + message):
        runlog.read_run(tmp_path)


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    path = runlog.log_path(tmp_path, 0)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"kind": "header", "format": "distgnn-runlog", "version": 99, "time": 1, "rank": 0}) + "\n")
    with pytest.raises(InputError, match=r"line 1: format version 99; this distgnn reads 1"):
        runlog.read_run(tmp_path)


def test_unwritable_run_log_names_it(tmp_path: Path) -> None:
    (tmp_path / "logs").write_text("not a folder\n")
    with pytest.raises(InputError, match=re.escape(f"run log {runlog.log_path(tmp_path, 0)}: cannot write it")):
        runlog.open_run_log(tmp_path, rank=0)


# ------------------------------------------------------------------ report

def test_summary_table_numbers(tmp_path: Path) -> None:
    write_rank(tmp_path, 0)
    write_rank(tmp_path, 1, slow=2.0)
    rows = report.summarize(runlog.read_run(tmp_path))
    assert [r.rank for r in rows] == [0, 1]
    fast, slow = rows
    assert (fast.epochs, fast.steps, fast.seeds) == (3, 12, 768)
    assert fast.seeds_per_s == pytest.approx(640.0) and slow.seeds_per_s == pytest.approx(320.0)
    assert fast.best_val == pytest.approx(0.7) and fast.best_val_epoch == 2 and fast.test_at_best_val == pytest.approx(0.65)
    assert fast.last_loss == pytest.approx(1.0 / 12)
    assert slow.wall_s == pytest.approx(2.4)
    table = report.format_table(rows).splitlines()
    assert table[0].split() == ["rank", "host", "epochs", "steps", "last", "loss", "best", "val", "@epoch", "test",
                                "seeds", "seeds/s", "wall", "s"]
    assert table[1].split() == ["0", "h0", "3", "12", "0.0833", "0.7000", "2", "0.6500", "768", "640.0", "1.2"]
    assert table[-1].split() == ["total", "1536", "960.0", "2.4"]


def test_unfinished_epoch_counts_from_its_step_lines(tmp_path: Path) -> None:
    clock = Clock(0.0)
    with runlog.RunLogWriter(runlog.log_path(tmp_path, 0), rank=0, host="h", job_id="j", clock=clock) as log:
        clock.now = 1.0
        log.step(epoch=0, step=10, loss=0.9, seeds=500, seconds=1.0)
    (row,) = report.summarize(runlog.read_run(tmp_path))
    assert (row.epochs, row.steps, row.seeds, row.seeds_per_s, row.best_val) == (0, 10, 500, 500.0, None)


def test_total_throughput_sums_ranks_inside_their_spans(tmp_path: Path) -> None:
    write_rank(tmp_path, 0)
    write_rank(tmp_path, 1, slow=2.0)
    grid, total = report.total_throughput(runlog.read_run(tmp_path))
    # Rank 0 logs from 0.1 s to 1.2 s at 640 seeds/s, rank 1 from 0.2 s to 2.4 s at 320 seeds/s.
    assert grid[0] == pytest.approx(0.1) and total[0] == pytest.approx(640.0)
    both = (grid > 0.15) & (grid < 1.25)
    assert both.sum() >= 10 and total[both].tolist() == pytest.approx([960.0] * int(both.sum()))
    assert total[grid > 1.25].tolist() == pytest.approx([320.0] * int((grid > 1.25).sum()))


def test_main_renders_png_and_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    from matplotlib.image import imread

    write_rank(tmp_path, 0)
    write_rank(tmp_path, 1, slow=2.0)
    assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "640.0" in out and f"plot: {tmp_path / 'report.png'}" in out
    png = tmp_path / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(png)
    assert pixels.shape[:2] == (1100, 1000)
    # Drawn, not blank: many distinct colours (lines of two ranks, the total, text).
    assert len(np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0)) > 50
    assert sorted(os.listdir(tmp_path)) == ["logs", "report.png"]


def test_report_as_a_process(tmp_path: Path) -> None:
    write_rank(tmp_path, 0)
    out = tmp_path / "plots" / "r.png"
    out.parent.mkdir()
    result = subprocess.run([sys.executable, "-m", "distgnn.report", str(tmp_path), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert report.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("distgnn report: error: "), err
    return err.strip()


def test_missing_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails([str(tmp_path / "nope")], capsys)
    assert err.endswith(f"run folder {tmp_path / 'nope'}: not a directory")


def test_run_folder_without_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails([str(tmp_path)], capsys)
    assert f"run folder {tmp_path}: no run logs" in err
    assert not (tmp_path / "report.png").exists()


def test_bad_log_line_fails_without_writing_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_rank(tmp_path, 0)
    path = runlog.log_path(tmp_path, 0)
    with open(path, "a") as out:
        out.write("{oops}\n")
    err = _fails([str(tmp_path)], capsys)
    assert f"run log {path}: line 19 column 2:" in err
    assert not (tmp_path / "report.png").exists()


def test_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_rank(tmp_path, 0)
    (tmp_path / "blocker").write_text("a file, not a folder\n")
    out = tmp_path / "blocker" / "r.png"
    err = _fails([str(tmp_path), "--out", str(out)], capsys)
    assert f"--out {out}: cannot write the report" in err
    assert sorted(os.listdir(tmp_path)) == ["blocker", "logs"]


def test_out_must_be_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_rank(tmp_path, 0)
    err = _fails([str(tmp_path), "--out", str(tmp_path / "r.pdf")], capsys)
    assert err.endswith(f"--out {tmp_path / 'r.pdf'}: the report is a PNG; give a path ending in .png")


def test_other_tasks_log_their_metric_and_every_score(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Link prediction logs mrr as its metric and auc/mrr/hits@k per split; the report plots the
    metric under its name."""
    clock = Clock(1000.0)
    scores = {"val": {"auc": 0.9, "mrr": 0.4, "hits@10": 0.7}, "test": {"auc": 0.89, "mrr": 0.38, "hits@10": 0.69}}
    out = io.StringIO()
    with runlog.RunLogWriter(runlog.log_path(tmp_path, 0), rank=0, host="h0", job_id="lp", clock=clock,
                             stream=out) as log:
        clock.now += 1
        log.epoch(epoch=0, loss=0.6, seeds=100, steps=1, seconds=1.0, val_acc=0.4, test_acc=0.38,
                  metric="mrr", scores=scores)
        log.summary(best_epoch=0, best_val_acc=0.4, test_acc=0.38, epochs=1, param_digest="x",
                    metric="mrr", scores=scores)
    (read,) = runlog.read_run(tmp_path)
    assert read.epochs[0].metric == "mrr" and read.epochs[0].scores == scores
    assert read.summary.metric == "mrr" and read.summary.scores["test"]["auc"] == 0.89
    assert "val mrr 0.4000" in out.getvalue() and "test auc 0.8900" in out.getvalue()
    assert report.main([str(tmp_path)]) == 0
    assert (tmp_path / "report.png").exists()
