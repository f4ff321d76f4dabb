"""One job's names in /dev/shm, so two jobs on one host (or a dead job's leftovers) never meet.

DGL 2.1 keeps a served part in POSIX shared memory under two kinds of names: the graph
structure and partition book under the graph name, and every kvstore tensor under its data
name alone (`node~_N~feat-kvdata-`). Two jobs of the same graph on one host therefore open
each other's segments: SIGBUS in a trainer, or `fail to open node~_N~orig_id-kvdata-`.

Each job gets a tag (`DISTGNN_SHM_TAG`, set by the launcher for every process):
- the graph name DGL sees is `<graph>-<tag>`, through a per-job copy of the partition
  config (`job_config`), which points at the shared, cached part files;
- kvstore segment names get the prefix `<tag>~` (`install`, in servers, trainers and DGL's
  spawned sampler processes alike: each maps the same names).

A server holds a shared lock on `/dev/shm/distgnn-<tag>.lock` while it runs; the kernel drops
it when the server dies, however it dies. A starting server removes the segments of every
tag whose lock nobody holds any more (`sweep`): what a killed job left behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from pathlib import Path

ENV = "DISTGNN_SHM_TAG"
SHM = Path("/dev/shm")
LOCK_PREFIX = "distgnn-"
_TAG = re.compile(r"^j[0-9a-f]{12}$")


def tag_for(job_id: str, run_dir: Path) -> str:
    """The tag of one launch: the same on every host, different for every run folder."""
    return "j" + hashlib.sha1(f"{job_id}\0{run_dir}".encode()).hexdigest()[:12]


def current() -> str | None:
    """This process's job tag, or None when not started by `launch` (DGL's own names)."""
    tag = os.environ.get(ENV, "")
    if not tag:
        return None
    if not _TAG.match(tag):
        raise ValueError(f"{ENV}={tag!r}: not a job tag (j and 12 hex digits)")
    return tag


def graph_name(name: str, tag: str | None) -> str:
    """The graph name DGL uses for this job's part (its shared-memory names start with it)."""
    return f"{name}-{tag}" if tag else name


def install(tag: str | None) -> None:
    """Prefix DGL's kvstore segment names with the tag, in this process. Idempotent."""
    if not tag:
        return
    from dgl.distributed import kvstore

    current_fn = kvstore.empty_shared_mem
    if getattr(current_fn, "distgnn_tag", None) == tag:
        return
    original = getattr(current_fn, "__wrapped__", current_fn)

    def tagged(name, *args, **kwargs):
        return original(f"{tag}~{name}", *args, **kwargs)

    tagged.__wrapped__ = original
    tagged.distgnn_tag = tag
    kvstore.empty_shared_mem = tagged


def install_from_env() -> None:
    """`install` for the tag in the environment, without importing DGL when there is none
    (the GPU compute path imports the trainer package and must stay free of DGL)."""
    tag = os.environ.get(ENV)
    if tag:
        install(current())


def job_config(part_config: Path, tag: str | None, into: Path, part: int) -> Path:
    """A copy of DGL's partition config under this job's graph name, its part files named by
    absolute path (they stay in the shared cache). Without a tag, part_config itself. One file
    per part: hosts that share a workspace (NFS) write theirs side by side."""
    if not tag:
        return part_config
    config = json.loads(Path(part_config).read_text())
    base = Path(part_config).resolve().parent
    config["graph_name"] = graph_name(config["graph_name"], tag)
    for key, files in config.items():
        if key.startswith("part-") and isinstance(files, dict):
            config[key] = {name: str(base / rel) for name, rel in files.items()}
    into.mkdir(parents=True, exist_ok=True)
    path = into / f"{config['graph_name']}-part{part}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(config, indent=4) + "\n")
    os.replace(tmp, path)
    return path


def lock_path(tag: str, root: Path = SHM) -> Path:
    return root / f"{LOCK_PREFIX}{tag}.lock"


def hold(tag: str, root: Path = SHM) -> int:
    """Take this job's shared lock; the returned descriptor keeps it until the process ends."""
    fd = os.open(lock_path(tag, root), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def segments_of(tag: str, root: Path = SHM) -> list[Path]:
    """Every segment of a job: its kvstore tensors and its graph's structure."""
    return sorted(p for p in root.iterdir() if p.name.startswith(f"{tag}~") or f"-{tag}" in p.name)


def sweep(root: Path = SHM, keep: str | None = None) -> list[str]:
    """Remove the segments of dead jobs (lock held by nobody); returns the tags removed."""
    removed = []
    for lock in sorted(root.glob(f"{LOCK_PREFIX}j*.lock")):
        tag = lock.name[len(LOCK_PREFIX):-len(".lock")]
        if tag == keep or not _TAG.match(tag):
            continue
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except (FileNotFoundError, PermissionError):  # swept by another server; another user's job
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live job
            os.close(fd)
            continue
        try:
            _remove(tag, root)
        except PermissionError:
            continue
        finally:
            os.close(fd)
        removed.append(tag)
    return removed


def release(tag: str, fd: int, root: Path = SHM) -> None:
    """At a server's normal end: drop the lock and, when no other server of the job still
    holds it, the job's segments (DGL leaves some behind)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return
    try:
        _remove(tag, root)
    finally:
        os.close(fd)


def _remove(tag: str, root: Path) -> None:
    for seg in segments_of(tag, root):
        seg.unlink(missing_ok=True)
    lock_path(tag, root).unlink(missing_ok=True)
