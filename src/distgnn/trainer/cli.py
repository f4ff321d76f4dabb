"""`train`: one trainer process, started by torchrun (which `launch` runs on every host).

Exit codes: 0 success, 2 bad input (one-line message), 1 anything else (one line when a process
it depends on died, else the traceback). After a failure the process leaves with `os._exit`: a
normal exit would run DGL's atexit client barrier, which waits forever for peers that will never
arrive (DGL-NOTES pitfall 5).
"""

from __future__ import annotations

import os
import sys
import traceback

from distgnn.errors import InputError, ProcessLost, RunFailure
from distgnn.runlog import write_line


def main(argv: list[str] | None = None) -> int:
    from distgnn.trainer.config import config_from_args

    try:
        cfg = config_from_args(argv)  # usage errors too: one line, exit 2
    except InputError as err:
        _error(err)
        return 2
    try:
        from distgnn.trainer.run import run

        run(cfg)
    except InputError as err:
        _error(err)
        _leave(2)
    except (ProcessLost, RunFailure) as err:
        _error(err)
        _leave(1)
    except BaseException:  # noqa: BLE001 - any failure must end the process, not hang it
        traceback.print_exc()
        sys.stderr.flush()
        _leave(1)
    return 0


def _error(err: Exception) -> None:
    # Whole, at a line start: the launcher's root cause looks for it (supervise.first_error_line).
    # Under torchrun the workers of a host share one log, so the line says whose it is.
    whose = f" (global rank {os.environ['RANK']})" if "TORCHELASTIC_RUN_ID" in os.environ else ""
    write_line(sys.stderr, f"train: error: {err}{whose}")


def _leave(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
elif __name__ == "__mp_main__":
    # A DGL sampler process of this trainer (multiprocessing's spawn re-imports the main module
    # under this name): it must not outlive the trainer (trainer/sampler_watch.py).
    from distgnn.trainer.sampler_watch import die_with_parent

    die_with_parent()
