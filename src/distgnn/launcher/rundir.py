"""The run folder, `<workspace>/runs/<job-id>/`: this module is the only owner of its layout.

    plan.json       the RunPlan (plan_to_json)
    ip_config.txt   the DGL-readable host list every process reads
    logs/<host>-<role>-<rank>.log
    logs/<host>-torchrun/   torchrun's own per-attempt folders (its default is a new
                    /tmp/torchelastic_* folder per run, never removed)
    shards/         this host's part, when shards are staged
    status.json     the final RunResult, written when the run ends
    config.yaml     every option as resolved (a --config file; `launch --resume` reads it)
    attempt-N/      the records of attempt N of a resumed job (logs/, plan, status, config)
    prometheus/targets.json   the run's /metrics endpoints (distgnn.metrics owns the format and
                    the path, file_sd_path; launcher/monitor.py keeps it current)
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from distgnn.atomic import atomic_write_text

STATUS_FORMAT = 1


def new_job_id() -> str:
    """A sortable, collision-safe run name: UTC time plus a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def run_dir(workspace: Path, job_id: str) -> Path:
    return workspace / "runs" / job_id


def logs_dir(run: Path) -> Path:
    return run / "logs"


def log_path(run: Path, host: str, role: str, rank: int) -> Path:
    return logs_dir(run) / f"{host}-{role}-{rank}.log"


def torchrun_log_dir(run: Path, host: str) -> Path:
    return run / "logs" / f"{host}-torchrun"


def ip_config_path(run: Path) -> Path:
    return run / "ip_config.txt"


def staged_shards(run: Path) -> Path:
    return run / "shards"


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically: readers see the old file or the whole new one, never a part."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def write_plan(run: Path, plan_json: dict) -> None:
    write_json(run / "plan.json", plan_json)


def read_plan(run: Path) -> dict:
    return json.loads((run / "plan.json").read_text(encoding="utf-8"))


def write_status(run: Path, status_json: dict) -> None:
    write_json(run / "status.json", {"format": STATUS_FORMAT, **status_json})


ATTEMPT_RECORDS = ("logs", "plan.json", "status.json", "ip_config.txt", "prometheus")
KEPT_RECORDS = ("config.yaml",)
"""Copied, not moved: a further resume reads it even if this attempt fails before writing its own."""


def archive_attempt(run: Path) -> Path:
    """Move the records of the run's last attempt into run/attempt-N/ (N = 1, 2, ...), so a
    resumed attempt starts with fresh logs and both stay readable."""
    import shutil

    number = 1 + sum(1 for p in run.glob("attempt-*") if p.is_dir())
    attempt = run / f"attempt-{number}"
    attempt.mkdir()
    for name in ATTEMPT_RECORDS:
        if (run / name).exists():
            (run / name).rename(attempt / name)
    for name in KEPT_RECORDS:
        if (run / name).exists():
            shutil.copy2(run / name, attempt / name)
    return attempt


def read_status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text(encoding="utf-8"))
