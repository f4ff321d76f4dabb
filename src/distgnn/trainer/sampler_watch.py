"""Fail a trainer at once when one of its DGL sampler processes dies.

With `--samplers N`, DGL 2.1 starts N sampler processes per trainer and its loader waits for
each batch with one `result_queue.get(timeout=1800)`. A sampler that raises (DGL prints its
traceback and the process exits) or that the kernel's OOM killer ends never answers, so its
trainer sat blocked for 30 minutes, and every DDP peer with it, before anything failed. The
pool's `get_result` is replaced by one that waits in short slices and, between them, checks
that every sampler process is still alive; a dead one ends the wait with a one-line error
naming it. The pool's own state (result queue, per-loader result lists) is used as DGL uses
it, so batches that arrive are handed out exactly as before.

The other way round, a trainer that dies (killed, or leaving with `os._exit` after a failure)
orphans its sampler processes: they are not in its process group (torchrun starts every
worker in a session of its own), so nothing stopped them and each kept its memory and its
DGL connections for good. `die_with_parent` makes the kernel kill a sampler process when
its trainer ends.
"""

from __future__ import annotations

import ctypes
import functools
import os
import queue
import signal
import time
from typing import Any

from distgnn.errors import ProcessLost

POLL_S = 1.0
"""How often a waiting trainer checks its sampler processes; also the most a death goes unseen."""
DEATH_GRACE_S = 5.0
"""After a broken handover, how long to wait for a sampler's death to show before re-raising."""
RESULT_TIMEOUT_S = 1800.0
"""DGL's own limit for one batch while every sampler is alive (kept: a slow cluster is not a failure)."""


def watch_sampler_pool(poll_s: float = POLL_S) -> bool:
    """Install the watch on DGL's sampler pool of this process; False when it has none."""
    from dgl.distributed import dist_context

    pool, _num_workers = dist_context.get_sampler_pool()
    if pool is None:
        return False
    pool.get_result = functools.partial(get_result_watched, pool, poll_s)
    return True


def get_result_watched(pool: Any, poll_s: float, dataloader_name: str, timeout: float = RESULT_TIMEOUT_S) -> Any:
    """DGL's `CustomPool.get_result`, failing within `poll_s` of a sampler process's death."""
    if dataloader_name not in pool.results:
        raise KeyError(f"sampler pool: result requested for an unknown loader {dataloader_name!r}")
    waiting = pool.results[dataloader_name]
    deadline = time.monotonic() + timeout
    while not waiting:
        try:
            name, data = pool.result_queue.get(timeout=poll_s)
        except queue.Empty:
            check_alive(pool.process_list)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no sampled batch for {timeout:.0f} s although every sampler process is alive")
            continue
        except (OSError, EOFError) as err:
            # A batch's tensors arrive as file descriptors that the sampler which made it hands
            # over on request; if that sampler died after queueing the batch, the handover
            # fails here (connection reset). Name the dead sampler rather than the socket.
            check_alive(pool.process_list, grace_s=DEATH_GRACE_S, cause=err)
            raise
        # Another loader's batch (evaluation and training share the pool) waits for its owner.
        pool.results[name].append(data)
    return waiting.pop(0)


def check_alive(processes: list, grace_s: float = 0.0, cause: BaseException | None = None) -> None:
    """Raise ProcessLost naming the first sampler process (multiprocessing.Process) that has
    ended, looking for up to `grace_s` (a process can break a connection just before the
    kernel reports it dead)."""
    deadline = time.monotonic() + grace_s
    while True:
        for index, proc in enumerate(processes):
            code = proc.exitcode
            if code is not None:
                raise ProcessLost(
                    f"sampler process {index + 1} of {len(processes)} (pid {proc.pid}) {describe_exit(code)} "
                    "while this trainer waited for its batches; its own traceback, if it printed one, is above"
                ) from cause
        if time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def describe_exit(code: int) -> str:
    """multiprocessing's exit code in words: negative codes are the signal that ended it."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent ends (Linux's PR_SET_PDEATHSIG).

    Called in a sampler process as it starts: spawn re-imports the trainer's main module
    there, under the name `__mp_main__`."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have ended before the request took effect: then init adopted us.
    if os.getppid() == 1:
        os._exit(1)
