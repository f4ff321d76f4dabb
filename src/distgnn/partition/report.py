"""Phase timing and peak memory, partition quality figures, and their printed form."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np


def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _own_rss_bytes() -> int:
    """This process's RSS from /proc/self/statm: a read, cheap enough to sample often."""
    import os

    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _rss_bytes()


def tree_rss_bytes() -> int:
    """RSS of this process and every process it started."""
    import psutil

    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:  # it ended meanwhile
            pass
    return int(total)


class _PeakSampler:
    """Samples the process tree's RSS on a thread while a phase runs.

    Per-phase peaks used to come from resetting the kernel's high-water mark
    (/proc/self/clear_refs), which also reset what outside tools such as
    `/usr/bin/time -v` report as the process's peak. Sampling leaves the kernel's
    figure alone (the run's true peak, reported as well); it can miss a spike shorter
    than the interval, which the whole-run VmHWM then still shows.
    """

    INTERVAL_S = 0.02
    TREE_EVERY = 25
    """Children are looked up every this many samples: finding them scans /proc."""

    def __init__(self) -> None:
        import threading

        self.peak = tree_rss_bytes()
        self._children = self.peak - _own_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="distgnn-rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        samples = 0
        while not self._stop.wait(self.INTERVAL_S):
            samples += 1
            if samples % self.TREE_EVERY == 0:
                self._children = max(0, tree_rss_bytes() - _own_rss_bytes())
            self.peak = max(self.peak, _own_rss_bytes() + self._children)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, tree_rss_bytes())


def run_peak_bytes() -> int:
    """The whole run's peak: the kernel's high-water mark of this process (never reset)."""
    return _vm_hwm_bytes() or _rss_bytes()


@dataclass
class Phase:
    name: str
    seconds: float
    peak_rss_bytes: int


@dataclass
class PhaseMeter:
    """Times named phases and records each one's peak RSS; prints progress to `stream`."""

    stream: TextIO | None = None
    phases: list[Phase] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str, detail: str = ""):
        if self.stream is not None:
            print(f"partition: {name}{' ' + detail if detail else ''} ...", file=self.stream, flush=True)
        sampler = _PeakSampler()
        start = time.perf_counter()
        try:
            yield
        finally:
            peak = sampler.stop()
        seconds = time.perf_counter() - start
        self.phases.append(Phase(name, seconds, peak))
        if self.stream is not None:
            print(
                f"partition: {name} done in {seconds:.2f}s, peak RSS {peak / 2**30:.2f} GiB",
                file=self.stream, flush=True,
            )

    def seconds(self, name: str) -> float:
        return sum(p.seconds for p in self.phases if p.name == name)

    def to_json(self) -> list[dict]:
        return [
            {"name": p.name, "seconds": round(p.seconds, 4), "peak_rss_bytes": p.peak_rss_bytes}
            for p in self.phases
        ]


def balance(values: np.ndarray) -> float:
    """max part total / mean part total (1.0 is perfect)."""
    total = float(values.sum())
    return float(values.max() * values.shape[0] / total) if total > 0 else 1.0


def per_part_totals(part: np.ndarray, weights: np.ndarray, num_parts: int) -> np.ndarray:
    return np.bincount(part, weights=weights, minlength=num_parts)


def part_balances(part: np.ndarray, vwgt: np.ndarray, names: list[str], rows: list[dict], num_parts: int) -> dict:
    """max/mean per part of nodes and owned edges (from the parts' rows) and of every other
    balance constraint (train nodes, other nodes)."""
    out = {
        "nodes": balance(np.array([r["nodes"] for r in rows], dtype=np.float64)),
        "edges": balance(np.array([r["edges"] for r in rows], dtype=np.float64)),
    }
    for i, name in enumerate(names):
        if name not in ("nodes", "in_edges"):
            out[name] = balance(per_part_totals(part, vwgt[:, i], num_parts))
    return out


def describe_node_data(schema: dict) -> str:
    """What the shards carry and what they lack, e.g. 'no features, no labels, masks train'."""
    parts = [f"{schema['feat_dim']}-d features" if schema["feat_dim"] else "no features"]
    if schema["has_label"] and schema.get("num_classes"):
        parts.append(f"labels ({schema['num_classes']} classes)")
    else:
        parts.append("no labels" + (" (every label is -1)" if schema["has_label"] else ""))
    if schema.get("has_target"):
        parts.append("regression targets")
    masks = [m.removesuffix("_mask") for m in schema["masks"]]
    parts.append(f"masks {'/'.join(masks)}" if masks else "no train/val/test masks")
    return ", ".join(parts)


def format_report(report: dict, stream: TextIO = sys.stdout) -> None:
    cut = report["edge_cut"]
    print(
        f"partitioned {report['graph_name']}: {report['num_nodes']} nodes, {report['num_edges']} edges "
        f"into {report['num_parts']} parts ({report['method']}, seed {report['seed']})",
        file=stream,
    )
    if "node_data" in report:
        print(f"node data: {describe_node_data(report['node_data'])}", file=stream)
    links = report.get("link_split")
    if links:
        print(f"link split (seed {links['seed']}): {links['train_edges']} training edges kept; "
              f"{links['val_pairs']} validation and {links['test_pairs']} test pairs held out, "
              f"{links['negatives']} fixed negatives each", file=stream)
    metis = report.get("metis") or {}
    if metis:
        tries = metis.get("initial_tries")
        if metis.get("fallback"):
            print(f"METIS: {metis['fallback']}", file=stream)
        print(f"METIS: {metis['library']} ({metis['idx_bits']}-bit ids), coarsening to {metis['coarsen_to']} nodes, "
              f"{'its own number of' if tries is None else tries} initial partitioning{'' if tries == 1 else 's'}",
              file=stream)
    _print_memory(report, stream)
    print(f"edge cut: {cut['count']} of {report['num_edges']} edges ({cut['percent']:.2f}%)", file=stream)
    print(
        "balance (max/mean): " + ", ".join(f"{k} {v:.3f}" for k, v in report["balance"].items()),
        file=stream,
    )
    print(f"{'part':>5} {'nodes':>10} {'edges':>12} {'out_edges':>10} {'halo':>10} {'train':>8}", file=stream)
    for row in report["parts"]:
        print(
            f"{row['part']:>5} {row['nodes']:>10} {row['edges']:>12} {row['out_edges']:>10} "
            f"{row['halo_nodes']:>10} {row['train_nodes']:>8}",
            file=stream,
        )
    print(f"{'phase':<12} {'seconds':>9} {'peak RSS GiB':>13}", file=stream)
    for phase in report["phases"]:
        print(
            f"{phase['name']:<12} {phase['seconds']:>9.2f} {phase['peak_rss_bytes'] / 2**30:>13.2f}",
            file=stream,
        )
    print(f"{'total':<12} {report['seconds']:>9.2f}", file=stream)
    memory = report.get("memory")
    if memory:
        print(f"peak RSS (whole run): {memory['peak_rss_bytes'] / 2**30:.2f} GiB", file=stream)
    stream.flush()


def _print_memory(report: dict, stream: TextIO) -> None:
    memory = report.get("memory")
    if memory:
        detail = memory.get("detail") or memory["path"]
        estimate = memory.get("estimated_peak_bytes")
        print(f"path: {detail}; memory budget {describe_bytes(memory['budget_bytes'])} ({memory['budget_source']})"
              + (f", estimated peak {describe_bytes(estimate)}" if estimate else ""), file=stream)
    if report.get("temp_disk_bytes"):
        print(f"temporary disk space: {describe_bytes(report['temp_disk_bytes'])} at most (removed)", file=stream)
    coarse = report.get("coarsening")
    if coarse:
        steps = ", ".join(f"{lv['nodes']} nodes / {lv['adjacency']} entries in {lv['seconds']:.2f}s"
                          for lv in coarse["levels"])
        print(f"coarsening: {len(coarse['levels'])} level(s): {steps}; METIS on {coarse['coarse_nodes']} nodes",
              file=stream)
        print(f"refinement: undirected cut {coarse['projected_cut']} projected -> {coarse['refined_cut']} "
              f"after {len(coarse['refine_moves'])} pass(es) moving {sum(coarse['refine_moves'])} nodes",
              file=stream)


def describe_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
