"""The optional progress callback every reader accepts."""

from __future__ import annotations

from typing import Callable

Progress = Callable[[str, int, int], None]
"""progress(phase, done, total): called a few times per phase (per row group or chunk)."""


def report(progress: Progress | None, phase: str, done: int, total: int) -> None:
    if progress is not None:
        progress(phase, done, total)
