"""Training checkpoints: the only reader and writer of CKPT_DIR/epoch-NNNNN.pt and CKPT_DIR/latest.

A checkpoint is written to a temporary file in the same folder, fsynced and
renamed into place; then its sha256 goes to epoch-NNNNN.pt.sha256 (the same way),
and only then does `latest` move to it, so a crash at any moment leaves the
previous checkpoint complete and named by `latest`. A resume reads the newest
checkpoint whose bytes match its digest: a flipped byte, a truncated file or a
missing digest make a checkpoint damaged, and the one before it is used instead.
Files are loaded with torch.load(weights_only=True): everything stored is
tensors, numbers, strings, lists and dicts, so a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distgnn.atomic import atomic_write, atomic_write_text
from distgnn.errors import InputError
from distgnn.partition.shards import sha256_file

FORMAT = "distgnn-checkpoint"
VERSION = 1
LATEST = "latest"
_NAME = re.compile(r"^epoch-(\d{5,})\.pt$")
DIGEST_SUFFIX = ".sha256"


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:05d}.pt"


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(ckpt_dir: str | os.PathLike[str], epoch: int, state: dict[str, Any], *, keep: int = 3) -> Path:
    """Write `state` as epoch-NNNNN.pt, point `latest` at it, keep the newest `keep` checkpoints.

    Call it on one rank only (rank 0): the files are shared by name.
    """
    if keep < 1:
        raise ValueError(f"save_checkpoint keep must be >= 1, got {keep}")
    folder = Path(ckpt_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # Leftovers of a writer that died before its rename; nobody else writes here.
    for stale in folder.glob(".*.tmp"):  # atomic_write's temporary names
        stale.unlink(missing_ok=True)
    payload = {**state, "format": FORMAT, "version": VERSION, "epoch": int(epoch)}
    name = checkpoint_name(epoch)
    # Serialised in memory first: torch.save into a file reports a full disk as a bare
    # RuntimeError ("file write failed"); a plain write of the bytes raises ENOSPC itself.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getbuffer()
    path = atomic_write(folder / name, lambda f: f.write(data), durable=True)
    atomic_write_text(_digest_path(path), f"{hashlib.sha256(data).hexdigest()}\n", durable=True)
    del data, buffer
    atomic_write_text(folder / LATEST, f"{name}\n", durable=True)
    for _, old in _checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
        _digest_path(old).unlink(missing_ok=True)
    return path


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def damage(path: Path) -> str | None:
    """Why a checkpoint file cannot be trusted (None: its bytes match its digest)."""
    digest = _digest_path(path)
    if not digest.is_file():
        return f"no {digest.name} beside it"
    try:
        expected = digest.read_text().strip()
        actual = sha256_file(path)
    except OSError as err:
        return f"unreadable ({err.strerror})"
    return None if actual == expected else "its sha256 does not match (damaged or truncated)"


def intact_checkpoint(ckpt_dir: str | os.PathLike[str]) -> tuple[Path | None, list[str]]:
    """The newest checkpoint whose bytes match its digest, and a note for each newer one
    passed over as damaged. (None, notes) when none is intact."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None, []
    notes = []
    newest = latest_checkpoint(folder)
    candidates = [p for _, p in reversed(_checkpoints(folder))]
    if newest is not None and newest in candidates:  # `latest` first, then older ones
        candidates.remove(newest)
        candidates.insert(0, newest)
    for path in candidates:
        why = damage(path)
        if why is None:
            return path, notes
        notes.append(f"{path.name}: {why}")
    return None, notes


def shared_files(ckpt_dir: str | os.PathLike[str]) -> list[Path]:
    """The files another machine needs to resume from this folder: the newest intact
    checkpoint and its digest (none when there is no intact one)."""
    path, _damaged = intact_checkpoint(ckpt_dir)
    return [] if path is None else [path, _digest_path(path)]


def latest_checkpoint(ckpt_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint `latest` names; the newest epoch file if that pointer is gone; None if there is none."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    pointer = folder / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        if _NAME.match(name) and (folder / name).is_file():
            return folder / name
    found = _checkpoints(folder)
    return found[-1][1] if found else None


def load_checkpoint(
    path: str | os.PathLike[str], *, model_config: dict[str, Any], flag: str = "--resume"
) -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint, refusing one of another model shape.

    `flag` is the command-line option that asked for it, named in every error.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{flag}: checkpoint {path} does not exist") from None
    except Exception as exc:  # torch.load raises many types for a damaged file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{flag}: cannot read checkpoint {path}: {reason}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{flag}: {path} is not a distgnn checkpoint")
    if state.get("version") != VERSION:
        raise InputError(f"{flag}: checkpoint {path} has format version {state.get('version')}, expected {VERSION}")
    saved = state.get("model_config")
    if not isinstance(saved, dict):
        raise InputError(f"{flag}: checkpoint {path} has no model_config")
    differing = sorted(k for k in set(saved) | set(model_config) if saved.get(k) != model_config.get(k))
    if differing:
        details = ", ".join(f"{k} (checkpoint {saved.get(k)!r}, this run {model_config.get(k)!r})" for k in differing)
        raise InputError(f"{flag}: checkpoint {path} was trained with a different model: {details}")
    return state


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (if present) CUDA generator states, as weights_only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # uint32 has no torch dtype in 2.2; int64 holds it exactly.
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_python_state(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    # A run resumed on a machine with a different GPU count keeps its fresh CUDA seeds.
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(value: Any) -> tuple[Any, ...]:
    # random.setstate wants tuples; a round trip through some loaders gives lists.
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def _bare(model: nn.Module) -> nn.Module:
    # A DDP wrapper's state_dict prefixes every key with "module."; store the bare model's.
    return getattr(model, "module", model)


def make_state(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: Any,
    model_config: dict[str, Any],
    train_config: dict[str, Any],
    progress: dict[str, Any],
    rng: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything a resumed run needs, in the layout load_checkpoint and apply_state expect.

    `progress`: the loop's own counters (epoch, best accuracy, patience, ...), plain types only.
    `rng`: one captured RNG state per rank (a distributed run gathers them on rank 0); by
    default this process's.
    """
    return {
        "model": _bare(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng if rng is not None else [capture_rng_state()],
        "model_config": dict(model_config),
        "train_config": dict(train_config),
        "progress": dict(progress),
    }


def apply_state(
    state: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: Any,
    rank: int = 0,
) -> dict[str, Any]:
    """Load a checkpoint's model, optimizer, scheduler, scaler and this rank's RNG state into
    live objects; returns the saved progress. A run resumed with more ranks than it saved
    reuses the saved states round-robin."""
    _bare(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    # A disabled scaler (fp32/bf16 run) saves {}; an fp16 run resuming from it starts with a fresh scale.
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    restore_rng_state(rngs[rank % len(rngs)])
    return state["progress"]
