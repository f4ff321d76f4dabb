"""Progress within a long phase: a tqdm bar on a terminal, plain periodic lines otherwise.

`Progress.counter(what, total, unit)` returns `update(done)`, called with the running
count; the display shows the count, the total and the rate. `--quiet` gives a
Progress with no stream, whose counters do nothing.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, TextIO

LINE_EVERY_S = 5.0
"""Plain-line mode prints at most one line per counter this often (and the last)."""


class Progress:
    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    @contextmanager
    def counter(self, what: str, total: int, unit: str):
        if self.stream is None:
            yield lambda _done: None
        elif self.tty:
            from tqdm import tqdm

            with tqdm(total=total, desc=f"partition: {what}", unit=unit, unit_scale=True,
                      file=self.stream, leave=False, dynamic_ncols=True) as bar:
                yield lambda done: bar.update(done - bar.n)
        else:
            yield from self._lines(what, total, unit)

    def _lines(self, what: str, total: int, unit: str):
        start = last = time.monotonic()
        state = {"done": 0}

        def update(done: int) -> None:
            nonlocal last
            state["done"] = done
            now = time.monotonic()
            if now - last >= LINE_EVERY_S:
                last = now
                self._line(what, done, total, unit, now - start)

        yield update
        if time.monotonic() - start >= LINE_EVERY_S:
            self._line(what, state["done"], total, unit, time.monotonic() - start)

    def _line(self, what: str, done: int, total: int, unit: str, seconds: float) -> None:
        rate = done / seconds if seconds > 0 else 0.0
        share = f" ({100 * done / total:.0f}%)" if total else ""
        print(f"partition: {what}: {done:,}/{total:,} {unit}{share}, {rate:,.0f} {unit}/s",
              file=self.stream, flush=True)


Update = Callable[[int], None]
