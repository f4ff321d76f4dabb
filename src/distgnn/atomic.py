"""Replacing a file so that readers see the old version or the whole new one, never a part.

Every file another process may read while we write it (checkpoints, the Prometheus targets
file, run status, predictions, reports, DGL partition configs) goes through here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object], *, durable: bool = False,
                 mode: int = 0o644) -> Path:
    """Call `write` on a temporary file beside `path`, then rename it over `path`.

    The temporary name is unique (mkstemp), so concurrent writers of the same path never share
    one. `durable` also fsyncs the file and its folder, so the new version survives a crash
    (checkpoints); `mode` replaces mkstemp's 0600 so other users (a Prometheus in a container)
    can read the result. On any error the temporary file is removed and the old file stays.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, **kwargs) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")), **kwargs)


def _fsync_dir(folder: Path) -> None:
    # A rename is only durable once the directory entry itself is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
