"""`distgnn`: one entry point for every command (`distgnn partition|train|launch|report ...`).

Each subcommand is also installed as its own script (`partition`, `train`, `launch`); this
dispatcher only forwards the remaining arguments.
"""

from __future__ import annotations

import sys

USAGE = """usage: distgnn COMMAND [ARGS...]

commands:
  partition   shard a graph with METIS into Parquet (see `distgnn partition --help`)
  train       one distributed trainer, run under torchrun (normally started by `launch`)
  launch      start graph servers and trainers on every host of an ip_config.txt
  report      plot loss, accuracy and throughput of a run folder into a PNG
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "partition":
        from distgnn.partition.cli import main as run
    elif command == "train":
        from distgnn.trainer.cli import main as run
    elif command == "launch":
        from distgnn.launcher.cli import main as run
    elif command == "report":
        from distgnn.report import main as run
    else:
        print(f"distgnn: error: unknown command {command!r}\n{USAGE}", end="", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
