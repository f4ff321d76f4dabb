"""`partition --graph SRC --num-parts N --out DIR`: graph -> Parquet shards + manifest."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from distgnn.cliutil import Parser
from distgnn.errors import InputError

PROG = "partition"
METHODS = ("metis", "random")
"""Checked again by PartitionConfig (the same tuple): the parser's choices keep --help honest."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Partition a graph into Parquet shards (one per machine) with METIS.",
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--graph", required=True,
                    help="graph source: a Parquet graph folder, an edge list, a .dgl file or synthetic:...")
    io.add_argument("--num-parts", type=int, required=True, help="number of parts (one per machine)")
    io.add_argument("--out", type=Path, required=True, help="partition folder to create")
    io.add_argument("--overwrite", action="store_true", help="replace an existing --out once the new one is complete")
    io.add_argument("--link-split", metavar="TRAIN,VAL,TEST",
                    help="for link prediction: split the edges (e.g. 0.85,0.05,0.1, seeded by --seed); only "
                         "training edges stay in the graph, validation and test pairs are stored with fixed "
                         "negatives (default: no split)")
    how = parser.add_argument_group("partitioning")
    how.add_argument("--method", default="metis", choices=METHODS, help="metis (default) or random")
    how.add_argument("--seed", type=int, default=0, help="seed for METIS or the random assignment (default 0)")
    how.add_argument("--metis-niter", type=int, default=1,
                     help="METIS refinement iterations per level (default 1, as DGL)")
    room = parser.add_argument_group("memory, disk and output")
    room.add_argument("--memory-budget", metavar="SIZE",
                      help="most memory the run may hold, e.g. 768MiB or 16GiB (default: 75%% of the memory "
                           "available); a graph that does not fit is streamed through --tmp-dir")
    room.add_argument("--tmp-dir", type=Path, metavar="DIR",
                      help="folder for temporary files when streaming (default: beside --out); removed at the end")
    room.add_argument("--dry-run", action="store_true",
                      help="print the path, estimated peak memory and disk space, then exit")
    room.add_argument("--quiet", action="store_true", help="no progress lines, no printed report")
    return parser


def config_from_args(args: argparse.Namespace, command: str):
    from distgnn.partition.budget import parse_size
    from distgnn.partition.linksplit import parse_fractions
    from distgnn.partition.run import PartitionConfig

    return PartitionConfig(
        graph=args.graph, num_parts=args.num_parts, out=args.out, method=args.method,
        seed=args.seed, metis_niter=args.metis_niter, overwrite=args.overwrite,
        quiet=args.quiet, dry_run=args.dry_run, command=command,
        memory_budget=None if args.memory_budget is None else parse_size(args.memory_budget),
        tmp_dir=args.tmp_dir,
        link_split=None if args.link_split is None else parse_fractions(args.link_split),
    )


def dry_run(config) -> None:
    """Print the plan for the input's size; InputError (exit 2) when the disks cannot hold it."""
    from distgnn.graph import probe_graph
    from distgnn.partition.report import describe_bytes
    from distgnn.partition.run import check_disk_space, check_num_parts, check_tmp_dir, plan_for, resolve_budget

    probe = probe_graph(config.graph)
    check_num_parts(config, probe.num_nodes)
    budget_bytes, source = resolve_budget(config)
    route = plan_for(config, budget_bytes, probe)
    approx = "" if probe.exact else " (sizes estimated from the input file)"
    print(f"input: {probe.num_nodes} nodes, {probe.num_edges} edges, feat_dim {probe.feat_dim}{approx}")
    print(f"memory budget: {describe_bytes(budget_bytes)} ({source})")
    print(f"path: {route.describe()}")
    print(f"estimated peak memory: {describe_bytes(route.peak_bytes)}")
    if route.path == "streaming":
        print(f"in memory it would need: {describe_bytes(route.in_memory_peak_bytes)}")
        tmp = check_tmp_dir(config)
        print(f"estimated temporary disk space: {describe_bytes(route.temp_disk_bytes)} in {tmp}")
    print(f"estimated disk space: {describe_bytes(route.final_disk_bytes)} in {config.out}")
    check_disk_space(config, route)


def main(argv: list[str] | None = None) -> int:
    import shlex

    command = shlex.join([PROG, *(sys.argv[1:] if argv is None else argv)])
    try:
        args = build_parser().parse_args(argv)
        config = config_from_args(args, command)
        if config.dry_run:
            from distgnn.partition.run import check_output

            check_output(config)
            dry_run(config)
            return 0
        from distgnn.partition.run import run

        run(config)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler below
    except InputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of the report went away (`partition ... | head`). The partition was
        # published before the report was printed; point stdout at /dev/null so that the
        # interpreter's last flush does not raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
