"""The `partition` command's work: load, partition, write shards atomically, report."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np

from distgnn.errors import InputError
from distgnn.graph.data import MASK_NAMES, GraphData
from distgnn.partition import layout as plan
from distgnn.partition import shards
from distgnn.partition.metis import (
    MetisOptions, choose_library, largest_weight_total, part_kway, planned_coarsen_to,
    planned_initial_tries,
)
from distgnn.partition.report import PhaseMeter, part_balances

from distgnn.partition.cli import METHODS  # noqa: E402 - the command line's choices are the config's
LARGE_EDGES = 1_000_000
"""Inputs with at least this many edges get a progress line per phase on stderr."""
SPILL_BYTES = 256 * 2**20
"""Edge and feature arrays at least this big are moved to disk while METIS runs."""
SPILL = ".spill"
SPILLED = ("src", "dst", "feat", "label")
"""GraphData arrays moved to disk while METIS runs (the masks are small)."""


@dataclass(frozen=True, kw_only=True)
class PartitionConfig:
    """Everything one `partition` run needs, validated once."""

    graph: str
    """Graph source spec, as distgnn.graph.load_graph accepts it."""
    num_parts: int
    """Number of parts (one per machine), 1 .. number of nodes."""
    out: Path
    """Partition folder to create."""
    method: str = "metis"
    """"metis" (k-way, balanced on train nodes and in-edges) or "random"."""
    seed: int = 0
    """Seed for METIS or for the random assignment: same seed, same partition."""
    metis_niter: int = 1
    """METIS refinement iterations per level (1, as DGL's METIS call uses: the cut is
    close to the default 10's at a fraction of the time)."""
    overwrite: bool = False
    """Replace an existing --out folder (only once the new one is complete)."""
    quiet: bool = False
    """No progress lines and no printed report."""
    dry_run: bool = False
    """Only estimate memory and disk from the input's size."""
    memory_budget: int | None = None
    """Bytes the whole run may hold resident; None: budget.default_budget()."""
    tmp_dir: Path | None = None
    """Where the streaming path keeps its temporary files; None: beside --out."""
    command: str = ""
    """The command line recorded in the manifest."""
    link_split: tuple[float, float, float] | None = None
    """Fractions of train, validation and test edges for link prediction (linksplit); None: no split."""

    def __post_init__(self) -> None:
        if self.num_parts < 1:
            raise InputError(f"--num-parts must be at least 1 (got {self.num_parts})")
        if self.method not in METHODS:
            raise InputError(f"--method must be one of {', '.join(METHODS)} (got {self.method!r})")
        if self.seed < 0:
            raise InputError(f"--seed must be non-negative (got {self.seed})")
        if self.metis_niter < 1:
            raise InputError(f"--metis-niter must be at least 1 (got {self.metis_niter})")
        if not str(self.out):
            raise InputError("--out must name a folder")
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise InputError(f"--memory-budget must be more than 0 (got {self.memory_budget})")


def check_output(config: PartitionConfig) -> None:
    """Fail before any work if --out cannot be created."""
    out = config.out
    if (out.exists() or out.is_symlink()) and not config.overwrite:
        raise InputError(f"--out {out}: already exists (pass --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise InputError(f"--out {out}: parent folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"--out {out}: parent folder {parent} is not writable")


def check_tmp_dir(config: PartitionConfig) -> Path:
    """The folder to create the run's temporary folder in (must exist and be writable)."""
    folder = config.tmp_dir if config.tmp_dir is not None else config.out.absolute().parent
    if not folder.is_dir():
        raise InputError(f"--tmp-dir {folder}: no such folder")
    if not os.access(folder, os.W_OK):
        raise InputError(f"--tmp-dir {folder}: not writable")
    return folder


def temp_dir(config: PartitionConfig) -> Path:
    out = config.out.absolute()
    return check_tmp_dir(config) / f".{out.name}.tmp-{os.getpid()}"


def check_num_parts(config: PartitionConfig, num_nodes: int) -> None:
    if config.num_parts > num_nodes:
        raise InputError(
            f"--num-parts {config.num_parts} is more than the graph's {num_nodes} nodes"
        )


# ---------------------------------------------------------------- staging folder


def staging_dir(out: Path) -> Path:
    """A temporary sibling of --out, so the final rename stays on one file system."""
    out = out.absolute()
    return out.parent / f".{out.name}.partial-{os.getpid()}"


def publish(staged: Path, out: Path) -> None:
    """Move the finished folder to `out`, replacing an existing one only now."""
    out = out.absolute()
    if not out.exists():
        staged.rename(out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(old)
    try:
        staged.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- the run


class Spill:
    """Moves graph.src/dst/feat/label to read-only memory maps of copies in `folder`.

    METIS keeps its whole coarsening hierarchy in memory; the edge list and the features
    are not needed again until METIS returns, so parking them in the page cache (not in
    this process's RSS) keeps the peak down, as DGL's METIS build does with its on-disk
    option. `start` writes the copies on a thread and swaps the arrays for their maps
    there; it runs while METIS does, on the core METIS leaves idle (started during the
    CSR build instead, it slowed that by 0.65 s on the 2M-node graph). METIS's memory
    grows level by level, so the arrays are gone long before its peak. The caller must
    not touch these arrays between `start` and `finish`, nor hold other references.
    """

    def __init__(self, graph: GraphData, folder: Path) -> None:
        self.graph = graph
        self.folder = folder
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        self.folder.mkdir()
        self._thread = threading.Thread(target=self._spill, name="distgnn-spill", daemon=True)
        self._thread.start()

    def _spill(self) -> None:
        try:
            for name in SPILLED:
                array = getattr(self.graph, name)
                if array is not None:
                    np.save(self.folder / f"{name}.npy", array, allow_pickle=False)
            array = None  # no reference of ours may outlive the swap below
            for name in SPILLED:
                if getattr(self.graph, name) is not None:
                    setattr(self.graph, name, np.load(self.folder / f"{name}.npy", mmap_mode="r"))
            release_free_memory()
        except BaseException as err:  # noqa: BLE001 - re-raised by finish()
            self._error = err

    def wait(self) -> None:
        """Let the thread end (so a failed run can delete the staging folder)."""
        if self._thread is not None:
            self._thread.join()

    def finish(self) -> None:
        """Wait for the copies; raise what went wrong writing them."""
        assert self._thread is not None, "Spill.finish before start"
        self.wait()
        if self._error is not None:
            raise self._error


def release_free_memory() -> None:
    """Return freed heap memory to the OS: buffers a Parquet reader or writer left in
    Arrow's pool, and glibc arena pages freed by NumPy, SciPy and the writer threads."""
    import ctypes

    import pyarrow

    pyarrow.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def drop_spilled_pages(graph: GraphData) -> None:
    """Unmap the pages of the spilled arrays that the write phase read in.

    They are file pages of the page cache, yet count in this process's RSS while
    mapped (0.9 GB on the 2M-node graph), and whoever materialises DGL files in this
    process next would carry them; the data stays readable, it faults back in on use.
    """
    import mmap

    for name in SPILLED:
        mapped = getattr(getattr(graph, name), "_mmap", None)
        if mapped is not None:
            mapped.madvise(mmap.MADV_DONTNEED)


def assign(graph: GraphData, config: PartitionConfig, vwgt: np.ndarray, meter: PhaseMeter,
           spill: Path | None = None) -> tuple[np.ndarray, dict]:
    """Part of every node, and what METIS reported: its own cut count and the library
    it ran in (empty for random)."""
    if config.method == "random" or config.num_parts == 1:
        with meter.phase("assign", f"{config.method} into {config.num_parts} parts"):
            if config.num_parts == 1:
                return np.zeros(graph.num_nodes, dtype=np.int64), {}
            return plan.random_assignment(graph.num_nodes, config.num_parts, config.seed), {}
    with meter.phase("csr", "symmetric de-duplicated adjacency"):
        indptr, indices = plan.symmetric_csr(graph.src, graph.dst, graph.num_nodes)
    total = largest_weight_total(vwgt, graph.num_nodes)
    library = choose_library(graph.num_nodes, int(indices.shape[0]), total)
    options = MetisOptions(seed=config.seed, niter=config.metis_niter)
    target = planned_coarsen_to(library, graph.num_nodes, config.num_parts, options)
    detail = (f"k-way into {config.num_parts} parts, {vwgt.shape[1]} constraints, "
              f"{library.idx_bits}-bit ids, coarsening to {target} nodes")
    spilling = Spill(graph, spill) if spill is not None else None
    with meter.phase("metis", detail):
        if spilling is not None:
            spilling.start()
        try:
            part, metis_cut = part_kway(indptr, indices, config.num_parts, vwgt, options, library)
        finally:
            if spilling is not None:
                spilling.wait()
        del indptr, indices
        if spilling is not None:
            spilling.finish()
    facts = {"undirected_cut": metis_cut, **library.to_json(), "coarsen_to": target,
             "initial_tries": planned_initial_tries(library, options)}
    return plan.fill_empty_parts(part, config.num_parts), facts


def schema_of(graph: GraphData) -> shards.FeatureSchema:
    return shards.FeatureSchema(
        feat_dim=graph.feat_dim,
        has_label=graph.label is not None,
        has_target=graph.target is not None,
        masks=tuple(m for m in MASK_NAMES if m in graph.masks),
        num_classes=graph.num_classes,
    )


def partition_graph(graph: GraphData, config: PartitionConfig, meter: PhaseMeter, staged: Path) -> dict:
    """Partition `graph` and write the complete partition folder at `staged`."""
    start = time.perf_counter()
    check_num_parts(config, graph.num_nodes)
    num_parts = config.num_parts
    links = None
    if config.link_split is not None:
        from distgnn.partition import linksplit

        with meter.phase("link split", "hold out validation and test edges"):
            links = linksplit.split_edges(graph.src, graph.dst, graph.num_nodes, config.link_split, config.seed,
                                          config.graph)
            graph = replace(graph, src=graph.src[links.train], dst=graph.dst[links.train])
    vwgt, constraint_names = plan.vertex_weights(graph)
    staged.mkdir()
    big = sum(a.nbytes for a in (graph.src, graph.dst, graph.feat) if a is not None) >= SPILL_BYTES
    part, metis = assign(graph, config, vwgt, meter, staged / SPILL if big else None)

    with meter.phase("layout", "renumber nodes and order edges by owner"):
        layout = plan.plan_layout(part, graph.src, graph.dst, num_parts)

    schema = schema_of(graph)
    base = shards.PartInfo(
        graph_name=graph.name, part_id=0, num_parts=num_parts,
        num_nodes=graph.num_nodes, num_edges=graph.num_edges, method=config.method,
        node_ranges=layout.node_ranges, edge_ranges=layout.edge_ranges, schema=schema,
    )
    with meter.phase("write", f"{num_parts} part folders"):
        rows, known = write_parts(graph, layout, base, staged)
        if links is not None:
            known.update(write_link_pairs(staged, links, layout.new_id))

    report = {
        "graph_name": graph.name,
        "num_nodes": graph.num_nodes,
        "num_edges": graph.num_edges,
        "num_parts": num_parts,
        "method": config.method,
        "seed": config.seed,
        "metis": {k: v for k, v in metis.items() if k != "undirected_cut"},
        "edge_cut": {
            "count": layout.num_cut,
            "percent": 100.0 * layout.num_cut / graph.num_edges if graph.num_edges else 0.0,
            "metis_undirected": metis.get("undirected_cut"),
        },
        "balance": part_balances(layout.part, vwgt, constraint_names, rows, layout.num_parts),
        "parts": rows,
    }
    del layout, vwgt
    # the maps stay valid after the unlink; the files must not reach the manifest
    shutil.rmtree(staged / SPILL, ignore_errors=True)
    drop_spilled_pages(graph)
    release_free_memory()
    report["phases"] = meter.to_json()
    report["seconds"] = round(time.perf_counter() - start + meter.seconds("load"), 4)
    report["node_data"] = base.schema.to_json()
    if links is not None:
        report["link_split"] = links.summary()
    shards.write_manifest(staged, _manifest_data(graph, config, base, report), known)
    return report


def write_link_pairs(staged: Path, links, new_id: np.ndarray) -> dict[str, str]:
    """The validation and test pairs, renumbered like the nodes; returns their checksums."""
    known = {}
    for name, pairs in (("val", links.val), ("test", links.test)):
        known[shards.LINK_FILES[name]] = shards.write_link_pairs(
            staged, name, new_id[pairs.src], new_id[pairs.dst], new_id[pairs.neg])
    return known


def write_parts(graph: GraphData, layout: plan.Layout, base: shards.PartInfo, staged: Path) -> tuple[list[dict], dict[str, str]]:
    """Write every part's tables and info file, and the assignment; returns per-part statistics and the
    checksums computed on the way (relative path -> sha256).

    Two parts are written at a time: NumPy gathers, Parquet encoding and sha256 all
    release the GIL, so the second core does real work.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(p: int) -> tuple[dict, dict[str, str]]:
        nodes, edges, halo = plan.part_arrays(graph, layout, p)
        ref = shards.part_ref(staged, p)
        written = shards.write_part(ref, replace(base, part_id=p), nodes, edges, halo)
        owned = layout.edge_ranges[p][1] - layout.edge_ranges[p][0]
        train = nodes.masks.get("train_mask")
        row = {
            "part": p,
            "nodes": int(nodes.id.shape[0]),
            "edges": int(owned),
            "out_edges": int(edges.src.shape[0] - owned),
            "halo_nodes": int(halo.id.shape[0]),
            "train_nodes": int(train.sum()) if train is not None else 0,
        }
        return row, {ref.table_path(table).relative_to(staged).as_posix(): meta["sha256"]
                     for table, meta in written.files.items()}

    with ThreadPoolExecutor(max_workers=2) as pool:
        assignment = pool.submit(shards.write_assignment, staged, layout.new_id, layout.part)
        results = list(pool.map(one, range(layout.num_parts)))
        known = {shards.ASSIGNMENT: assignment.result()}
    for _row, sums in results:
        known.update(sums)
    return [row for row, _sums in results], known


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _manifest_data(graph: GraphData, config: PartitionConfig, base: shards.PartInfo, report: dict) -> dict:
    return {
        "graph_name": graph.name,
        "source": graph.source,
        "num_nodes": graph.num_nodes,
        "num_edges": graph.num_edges,
        "num_parts": config.num_parts,
        "method": config.method,
        "seed": config.seed,
        "metis": {"niter": config.metis_niter, **report["metis"]},
        "schema": base.schema.to_json(),
        "node_ranges": [list(r) for r in base.node_ranges],
        "edge_ranges": [list(r) for r in base.edge_ranges],
        "parts": [
            {**row, "info": shards.part_ref(Path(), row["part"]).info_path.as_posix()} for row in report["parts"]
        ],
        "report": {k: report[k] for k in ("edge_cut", "balance", "phases", "seconds", "coarsening",
                                          "temp_disk_bytes") if k in report},
        **({"link_split": report["link_split"]} if "link_split" in report else {}),
        "versions": {n: _version(n) for n in ("distgnn", "dgl", "pymetis", "numpy", "pyarrow")},
        "command": config.command,
    }


def run(config: PartitionConfig, *, stderr=sys.stderr, stdout=sys.stdout, load=None) -> dict:
    """Partition config.graph into a staging folder, publish it as config.out.

    The memory budget picks the path (budget.plan): in memory, or streamed through
    temporary files. On any failure the staging and temporary folders are removed and
    an existing --out is untouched. `load` replaces distgnn.graph.load_graph (tests pass
    in-memory graphs; the in-memory path is then taken).
    """
    check_output(config)
    budget_bytes, source = resolve_budget(config)
    if load is not None:
        route = None
    else:
        route = choose_path(config, budget_bytes)
        check_disk_space(config, route)
    if config.link_split is not None and route is not None and route.path == "streaming":
        raise InputError(f"--link-split: the split is made in memory, and this graph needs the streaming path "
                         f"under the memory budget ({route.describe()}); raise --memory-budget")
    staged = staging_dir(config.out)
    tmp = temp_dir(config) if route is not None and route.path == "streaming" else None
    try:
        with disk_errors(config, tmp):
            if route is None or route.path == "in-memory":
                report = _run_in_memory(config, staged, stderr, load)
            else:
                report = _run_streaming(config, route, tmp, staged, stderr)
            report["memory"] = _memory_facts(route, budget_bytes, source, report)
            shards.patch_manifest_report(staged, {"memory": report["memory"]})
            publish(staged, config.out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if not config.quiet:
        from distgnn.partition.report import format_report

        format_report(report, stdout)
    return report


def check_disk_space(config: PartitionConfig, route) -> None:
    """Refuse a plan whose files do not fit the free space (one device may hold both)."""
    from distgnn.partition.report import describe_bytes

    out_parent = config.out.absolute().parent
    needs = {out_parent: route.final_disk_bytes}
    if route.path == "streaming":
        tmp = check_tmp_dir(config)
        device = os.stat(tmp).st_dev
        same = next((d for d in needs if os.stat(d).st_dev == device), None)
        needs[same or tmp] = needs.get(same, 0) + route.temp_disk_bytes
    for folder, need in needs.items():
        free = shutil.disk_usage(folder).free
        if free < need:
            raise InputError(f"{folder}: {describe_bytes(free)} free, the run needs about {describe_bytes(need)} "
                             "(shards and temporary files); free space or pass --tmp-dir on another disk")


def resolve_budget(config: PartitionConfig) -> tuple[int, str]:
    from distgnn.partition import budget

    if config.memory_budget is not None:
        return config.memory_budget, "--memory-budget"
    return budget.default_budget(), f"default: {int(budget.DEFAULT_SHARE * 100)}% of the memory available"


def choose_path(config: PartitionConfig, budget_bytes: int):
    """The budget plan from the input's size (footers, a sample, or the spec)."""
    from distgnn.graph import probe_graph
    from distgnn.graph.load import resolve_spec

    if resolve_spec(config.graph).kind == "dgl":
        return _dgl_plan(config, budget_bytes)
    probe = probe_graph(config.graph)
    if probe.exact:  # an edge list's node count is a guess from a sample until it is read
        check_num_parts(config, probe.num_nodes)
    return plan_for(config, budget_bytes, probe)


def plan_for(config: PartitionConfig, budget_bytes: int, probe):
    """The budget plan for a probed input (what `--dry-run` prints and a run follows)."""
    from distgnn.partition import budget
    from distgnn.partition.metis import choose_library

    # the METIS build a run would pick, from the symmetric graph's largest possible size
    library = choose_library(probe.num_nodes, 2 * probe.num_edges, probe.num_edges)
    return budget.plan(budget=budget_bytes, num_nodes=probe.num_nodes, num_edges=probe.num_edges,
                       feat_dim=probe.feat_dim, num_parts=config.num_parts, method=config.method,
                       metis_id_bytes=library.idx_bits // 8)


def _dgl_plan(config: PartitionConfig, budget_bytes: int):
    """DGL has no reader that does not load the graph, so the file's size stands in
    for the graph's: the in-memory path when it fits, else streaming (whose read phase
    refuses a file too big to load)."""
    from distgnn.graph.stream import DGL_BYTES_PER_FILE_BYTE
    from distgnn.partition import budget

    size = Path(config.graph).stat().st_size
    need = budget.BASE_BYTES + DGL_BYTES_PER_FILE_BYTE * size
    edges = max(1, size // 16)
    return budget.plan(budget=budget_bytes, num_nodes=max(1, size // 64), num_edges=edges, feat_dim=0,
                       num_parts=config.num_parts, method=config.method,
                       force_streaming=need > budget_bytes)


def _run_in_memory(config: PartitionConfig, staged: Path, stderr, load) -> dict:
    meter = PhaseMeter(stream=None)
    if load is None:
        from distgnn.graph import load_graph as load
    with meter.phase("load"):
        graph = load(config.graph)
    check_num_parts(config, graph.num_nodes)
    if not config.quiet and graph.num_edges >= LARGE_EDGES:
        meter.stream = stderr
    return partition_graph(graph, config, meter, staged)


def _run_streaming(config: PartitionConfig, route, tmp: Path, staged: Path, stderr) -> dict:
    from distgnn.partition import streaming
    from distgnn.partition.progress import Progress

    start = time.perf_counter()
    stream = None if config.quiet else stderr
    meter = PhaseMeter(stream=stream)
    tmp.mkdir()
    staged.mkdir()
    ctx = streaming.Context(config=config, plan=route, meter=meter, progress=Progress(stream), tmp=tmp)
    graph, report, base, known = streaming.partition_streaming(ctx, staged)
    report["phases"] = meter.to_json()
    report["seconds"] = round(time.perf_counter() - start, 4)
    report["temp_disk_bytes"] = ctx.temp_peak_bytes
    report["node_data"] = base.schema.to_json()
    shards.write_manifest(staged, _manifest_data(graph, config, base, report), known)
    return report


def _memory_facts(route, budget_bytes: int, source: str, report: dict) -> dict:
    from distgnn.partition.report import run_peak_bytes

    facts = {"budget_bytes": budget_bytes, "budget_source": source,
             "path": "in-memory" if route is None else route.path,
             "peak_rss_bytes": run_peak_bytes()}
    if route is not None:
        facts["estimated_peak_bytes"] = route.peak_bytes
        # what ran: the plan guessed from the edge count, the run knew the de-duplicated size
        ran = replace(route, metis_whole="coarsening" not in report)
        facts["detail"] = ran.describe()
    return facts


@contextmanager
def disk_errors(config: PartitionConfig, tmp: Path | None):
    """A full disk is an input problem (exit 2, one line), not a traceback."""
    try:
        yield
    except OSError as err:  # pyarrow's writers raise OSError without an errno
        if err.errno not in (errno.ENOSPC, errno.EDQUOT) and "No space left on device" not in str(err):
            raise
        where = err.filename or (tmp if tmp is not None else config.out)
        folder = "--tmp-dir" if tmp is not None and str(where).startswith(str(tmp)) else "--out"
        raise InputError(f"no space left on the device of {folder} while writing {where}") from None
