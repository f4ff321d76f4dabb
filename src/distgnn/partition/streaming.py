"""The bounded-memory `partition`: every pass streams the graph through disk.

Phases (each a PhaseMeter phase, see budget.py for the path choice):

1. read: the input is copied to flat files under the temporary folder in batches,
   with every check `load_graph` makes (distgnn.graph.stream).
2. degrees: in-degrees and the train mask give the balance constraints.
3. adjacency: the symmetric, de-duplicated adjacency is built on disk in row buckets.
4. metis (or coarsen, metis, refine): the part of every node.
5. layout: new ids in memory; edges appended to per-part files in one pass.
6. write: each part's Parquet files from those files, node rows in one pass over
   the features, the assignment; checksums as they are written.

Given the same part array, the shards hold the same rows in the same order as the
in-memory path's (files may hold several row groups).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from distgnn.graph.spilled import SpilledGraph, append, chunks
from distgnn.partition import budget as memory
from distgnn.partition import coarsen, shards
from distgnn.partition import layout as plan
from distgnn.partition.adjacency import DiskCSR, build_csr, in_degree, symmetric_entries
from distgnn.partition.progress import Progress
from distgnn.partition.report import PhaseMeter, part_balances, per_part_totals

MAX_LEVELS = 12
METIS_KWAY_UFACTOR = 30
"""METIS's default imbalance for k-way (1/1000): refinement keeps to the same limit."""
COARSE_NITER = 10
"""METIS refinement iterations on the coarse graph: it is small, so METIS's default
effort costs little there and the cut is better."""


@dataclass(kw_only=True)
class Context:
    config: object
    """The run's PartitionConfig."""
    plan: memory.Plan
    meter: PhaseMeter
    progress: Progress
    tmp: Path
    temp_peak_bytes: int = 0
    """The temporary folder's size at its largest checkpoints (after the adjacency is
    built and after the edges are split into parts)."""

    def note_disk(self) -> None:
        from distgnn.graph.spilled import size_on_disk

        self.temp_peak_bytes = max(self.temp_peak_bytes, size_on_disk(self.tmp))


def partition_streaming(ctx: Context, staged: Path) -> tuple[SpilledGraph, dict, shards.PartInfo, dict[str, str]]:
    """Read, partition and write the shards to `staged`; returns (graph, report, base
    info, checksums of the files written)."""
    from distgnn.graph.stream import spill_graph
    from distgnn.partition.run import check_num_parts

    config, p = ctx.config, ctx.plan
    with ctx.meter.phase("read", "copy the input to the temporary folder in batches"):
        with ctx.progress.counter("read", 0, "rows") as update:
            graph = spill_graph(config.graph, ctx.tmp / "input", rows=p.chunk_edges // 2,
                                limit=p.work_bytes, progress=lambda _ph, done, _t: update(done))
    check_num_parts(config, graph.num_nodes)
    with ctx.meter.phase("degrees", "in-degrees and balance constraints"):
        degree = in_degree(graph, p.chunk_edges)
        train = _whole_mask(graph, "train_mask")
        vwgt, names = plan.vertex_weight_columns(graph.num_nodes, train, degree)
        # int32 holds any node's weights (METIS's own width); totals are summed in int64
        vwgt = vwgt.astype(np.int32)
        del degree, train
    part, facts = assign(ctx, graph, vwgt)
    with ctx.meter.phase("layout", "renumber nodes, sort edges into parts on disk"):
        # an edge belongs to its destination's part: a part owns its nodes' in-degrees
        owned = per_part_totals(part, vwgt[:, names.index("in_edges")], config.num_parts)
        lay = stream_layout(ctx, graph, part, owned.astype(np.int64))
    ctx.note_disk()
    base = shards.PartInfo(
        graph_name=graph.name, part_id=0, num_parts=config.num_parts,
        num_nodes=graph.num_nodes, num_edges=graph.num_edges, method=config.method,
        node_ranges=lay.node_ranges, edge_ranges=lay.edge_ranges, schema=schema_of(graph),
    )
    with ctx.meter.phase("write", f"{config.num_parts} part folders"):
        rows, known = write_parts(ctx, graph, lay, base, staged)
    report = {
        "graph_name": graph.name,
        "num_nodes": graph.num_nodes,
        "num_edges": graph.num_edges,
        "num_parts": config.num_parts,
        "method": config.method,
        "seed": config.seed,
        "metis": {k: v for k, v in facts.items() if k not in ("undirected_cut", "coarsening")},
        "edge_cut": {
            "count": lay.num_cut,
            "percent": 100.0 * lay.num_cut / graph.num_edges if graph.num_edges else 0.0,
            "metis_undirected": facts.get("undirected_cut"),
        },
        "balance": part_balances(part, vwgt, names, rows, config.num_parts),
        "parts": rows,
    }
    if "coarsening" in facts:
        report["coarsening"] = facts["coarsening"]
    return graph, report, base, known


def schema_of(graph: SpilledGraph) -> shards.FeatureSchema:
    return shards.FeatureSchema(feat_dim=graph.feat_dim, has_label=graph.has_label, has_target=graph.has_target,
                                masks=graph.masks, num_classes=graph.num_classes)


def _whole_mask(graph: SpilledGraph, name: str) -> np.ndarray | None:
    if name not in graph.masks:
        return None
    out = np.empty(graph.num_nodes, dtype=np.bool_)
    for start, values in graph.column(name):
        out[start:start + values.shape[0]] = values
    return out


# ---------------------------------------------------------------- assignment


def assign(ctx: Context, graph: SpilledGraph, vwgt: np.ndarray) -> tuple[np.ndarray, dict]:
    from distgnn.partition.metis import (
        MetisOptions, choose_library, largest_weight_total, part_kway, planned_coarsen_to,
        planned_initial_tries,
    )

    config, p, n, k = ctx.config, ctx.plan, graph.num_nodes, ctx.config.num_parts
    if config.method == "random" or k == 1:
        with ctx.meter.phase("assign", f"{config.method} into {k} parts"):
            if k == 1:
                return np.zeros(n, dtype=np.int64), {}
            return plan.random_assignment(n, k, config.seed), {}
    with ctx.meter.phase("adjacency", "symmetric de-duplicated adjacency, bucketed on disk"):
        with ctx.progress.counter("sort buckets", 0, "buckets") as update:
            csr = build_csr(symmetric_entries(graph, p.chunk_edges), n, ctx.tmp / "adjacency",
                            bucket_entries=p.bucket_entries, weighted=False,
                            on_bucket=lambda done, _total: update(done))
    ctx.note_disk()
    options = MetisOptions(seed=config.seed, niter=config.metis_niter)
    whole = memory.metis_bytes(n, csr.num_entries, vwgt.shape[1]) <= p.work_bytes
    if whole:
        library = choose_library(n, csr.num_entries, largest_weight_total(vwgt, n))
        target = planned_coarsen_to(library, n, k, options)
        with ctx.meter.phase("metis", f"k-way into {k} parts on the whole graph, coarsening to {target} nodes"):
            indptr, indices, _w = csr.load()
            part, cut = part_kway(indptr.astype(indices.dtype), indices, k, vwgt, options, library)
            del indptr, indices
        facts = {"undirected_cut": cut, **library.to_json(), "coarsen_to": target,
                 "initial_tries": planned_initial_tries(library, options)}
        csr.remove()
        return plan.fill_empty_parts(part, k), facts
    part, facts = multilevel(ctx, csr, vwgt, options)
    csr.remove()
    return plan.fill_empty_parts(part, k), facts


def multilevel(ctx: Context, csr: DiskCSR, vwgt: np.ndarray, options) -> tuple[np.ndarray, dict]:
    """Coarsen until METIS fits, partition the coarsest graph, project, refine."""
    from distgnn.errors import InputError
    from distgnn.partition.metis import (
        choose_library, largest_weight_total, part_kway, planned_coarsen_to, planned_initial_tries,
    )

    p, k, n = ctx.plan, ctx.config.num_parts, csr.num_nodes
    ncon = vwgt.shape[1]
    levels: list[dict] = []
    mapping = np.arange(n, dtype=np.int64)
    node_weight = np.ones(n, dtype=np.int64)
    current = csr
    # Clusters as large as balance allows (an eighth of a part: METIS can still balance
    # the coarse graph): label propagation then follows communities. Sizing them only as
    # small as the budget needs made pairs and triples of random neighbours on small-world
    # graphs (a 1.68x cut on a 6,000-node synthetic graph, against 1.25x this way; on a
    # 200k-node one 0.99x METIS on the whole graph).
    max_weight = max(2, n // (8 * k))
    with ctx.meter.phase("coarsen", "size-constrained label propagation on disk"):
        while memory.metis_bytes(current.num_nodes, current.num_entries, ncon) > p.work_bytes:
            if len(levels) == MAX_LEVELS:
                break
            start = time.perf_counter()
            cluster = coarsen.label_propagation(current, node_weight, max_weight, chunk=p.chunk_edges,
                                                seed=options.seed + len(levels))
            cluster = coarsen.group_loners(current, cluster, node_weight, max_weight)
            cluster, count = coarsen.compact(cluster)
            coarse = coarsen.contract(current, cluster, count, ctx.tmp / f"level-{len(levels) + 1}",
                                      chunk=p.chunk_edges, bucket_entries=p.bucket_entries)
            node_weight = np.bincount(cluster, weights=node_weight, minlength=count).astype(np.int64)
            mapping = cluster[mapping]
            del cluster
            if current is not csr:
                current.remove()
            levels.append({"nodes": coarse.num_nodes, "adjacency": coarse.num_entries,
                           "max_cluster": max_weight, "seconds": round(time.perf_counter() - start, 3)})
            stalled = coarse.num_nodes > 0.95 * current.num_nodes
            current = coarse
            if stalled:
                break
    need = memory.metis_bytes(current.num_nodes, current.num_entries, ncon)
    if need > p.work_bytes:
        raise InputError(
            f"--memory-budget {p.budget_bytes / 2**20:.0f}MiB: coarsening stopped at {current.num_nodes} nodes "
            f"and {current.num_entries} adjacency entries, whose METIS run needs {need / 2**20:.0f}MiB more "
            f"than the {p.work_bytes / 2**20:.0f}MiB left; give a larger budget")
    coarse_vwgt = coarsen.cluster_weights(mapping, current.num_nodes, vwgt)
    indptr, indices, weights = current.load()
    total = max(largest_weight_total(coarse_vwgt, current.num_nodes), int(weights.sum()) if weights is not None else 0)
    library = choose_library(current.num_nodes, current.num_entries, total)
    target = planned_coarsen_to(library, current.num_nodes, k, options)
    with ctx.meter.phase("metis", f"k-way into {k} parts on the {current.num_nodes}-node coarse graph"):
        coarse_part, _cut = part_kway(indptr.astype(indices.dtype), indices, k, coarse_vwgt,
                                      replace(options, niter=max(options.niter, COARSE_NITER)), library,
                                      adjwgt=weights)
    del indptr, indices, weights
    if current is not csr:
        current.remove()
    part = coarse_part[mapping]
    del mapping, coarse_part
    projected = coarsen.cut_of(csr, part, p.chunk_edges)
    with ctx.meter.phase("refine", "boundary moves on the full graph"):
        imbalance = (options.ufactor if options.ufactor >= 0 else METIS_KWAY_UFACTOR) / 1000
        result = coarsen.refine(csr, part, vwgt, k, chunk=p.chunk_edges, imbalance=imbalance)
    cut = coarsen.cut_of(csr, result.part, p.chunk_edges)
    facts = {"undirected_cut": cut, **library.to_json(), "coarsen_to": target,
             "initial_tries": planned_initial_tries(library, options),
             "coarsening": {"levels": levels, "coarse_nodes": current.num_nodes,
                            "coarse_adjacency": current.num_entries, "projected_cut": projected,
                            "refined_cut": cut, "refine_moves": result.moves}}
    return result.part, facts


# ---------------------------------------------------------------- layout


@dataclass(kw_only=True)
class StreamLayout:
    """plan.Layout's facts, with the per-part edges in files instead of arrays."""

    num_parts: int
    part: np.ndarray
    node_order: np.ndarray
    new_id: np.ndarray
    node_ranges: tuple[tuple[int, int], ...]
    edge_ranges: tuple[tuple[int, int], ...]
    folder: Path
    num_cut: int

    def inner(self, p: int) -> tuple[Path, Path]:
        return self.folder / f"inner-{p}.src", self.folder / f"inner-{p}.dst"

    def out(self, p: int, owner: int) -> tuple[Path, Path, Path]:
        """Edges from part p's nodes owned by part `owner`, in global edge id order."""
        base = self.folder / f"out-{p}-{owner}"
        return base.with_suffix(".src"), base.with_suffix(".dst"), base.with_suffix(".eid")


def stream_layout(ctx: Context, graph: SpilledGraph, part: np.ndarray, owned: np.ndarray) -> StreamLayout:
    """Renumber nodes by (part, original id) and split the edges by owner in one pass:
    an edge's id is its owner's range start plus its rank among the owner's edges in
    input order, exactly as plan.plan_layout numbers them. `owned`: edges per part."""
    k = ctx.config.num_parts
    nodes = plan.renumber(part, k)
    small = nodes.small
    chunk = ctx.plan.chunk_edges
    folder = ctx.tmp / "layout"
    folder.mkdir()
    lay = StreamLayout(num_parts=k, part=part, node_order=nodes.node_order, new_id=nodes.new_id,
                       node_ranges=nodes.node_ranges, edge_ranges=plan.ranges(owned), folder=folder, num_cut=0)
    del nodes
    next_eid = np.array([lo for lo, _hi in lay.edge_ranges], dtype=np.int64)
    with ctx.progress.counter("split edges", graph.num_edges, "edges") as update:
        for start, src, dst in graph.edges(chunk):
            lay.num_cut += _split_chunk(lay, small, src, dst, next_eid)
            update(start + src.shape[0])
    return lay


def _split_chunk(lay: StreamLayout, small: np.ndarray, src: np.ndarray, dst: np.ndarray,
                 next_eid: np.ndarray) -> int:
    owner = small[dst]
    src_part = small[src]
    order = np.argsort(owner, kind="stable")
    per_owner = np.bincount(owner, minlength=lay.num_parts)
    bounds = np.r_[0, np.cumsum(per_owner)]
    eid = np.empty(src.shape[0], dtype=np.int64)
    for p in np.flatnonzero(per_owner):
        sel = order[bounds[p]:bounds[p + 1]]
        eid[sel] = next_eid[p] + np.arange(sel.shape[0])
        next_eid[p] += sel.shape[0]
        s_path, d_path = lay.inner(int(p))
        append(s_path, lay.new_id[src[sel]])
        append(d_path, lay.new_id[dst[sel]])
    cut = np.flatnonzero(src_part != owner)
    if cut.size:
        key = src_part[cut].astype(np.int64) * lay.num_parts + owner[cut]
        grouped = cut[np.argsort(key, kind="stable")]
        keys = np.sort(key)
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        for a, b in zip(starts, np.r_[starts[1:], keys.shape[0]]):
            sel = grouped[a:b]
            sp, op = divmod(int(keys[a]), lay.num_parts)
            s_path, d_path, e_path = lay.out(sp, op)
            append(s_path, lay.new_id[src[sel]])
            append(d_path, lay.new_id[dst[sel]])
            append(e_path, eid[sel])
    return int(cut.size)


# ---------------------------------------------------------------- writing


def write_parts(ctx: Context, graph: SpilledGraph, lay: StreamLayout, base: shards.PartInfo,
                staged: Path) -> tuple[list[dict], dict[str, str]]:
    k = lay.num_parts
    known: dict[str, str] = {}
    rows = [{"part": p} for p in range(k)]
    for p in range(k):
        shards.part_ref(staged, p).make_dirs()
    node_files = write_nodes(ctx, graph, lay, staged, rows)
    with ctx.progress.counter("write parts", k, "parts") as update:
        for p in range(k):
            ref = shards.part_ref(staged, p)
            edge_meta, halo_meta = write_edges_and_halo(ctx, lay, p, ref, rows[p])
            files = {shards.NODES: node_files[p], shards.EDGES: edge_meta, shards.HALO: halo_meta}
            shards.write_part_info(ref, replace(base, part_id=p, files=files))
            known.update({ref.table_path(table).relative_to(staged).as_posix(): meta["sha256"]
                          for table, meta in files.items()})
            update(p + 1)
    known[shards.ASSIGNMENT] = write_assignment(lay, staged, ctx.plan.chunk_edges)
    shutil.rmtree(lay.folder, ignore_errors=True)
    return rows, known


def write_nodes(ctx: Context, graph: SpilledGraph, lay: StreamLayout, staged: Path,
                rows: list[dict]) -> list[dict]:
    """Every part's nodes table in one pass over the node rows (original id order,
    which is each part's new id order)."""
    schema = shards.nodes_schema(schema_of(graph))
    writers = [shards.TableWriter(shards.part_ref(staged, p).table_path(shards.NODES), schema)
               for p in range(lay.num_parts)]
    train = np.zeros(lay.num_parts, dtype=np.int64)
    try:
        batch_rows = graph.node_chunk_rows(ctx.plan.work_bytes)
        with ctx.progress.counter("write nodes", graph.num_nodes, "nodes") as update:
            for batch in graph.nodes(batch_rows):
                count = batch.count
                orig = np.arange(batch.start, batch.start + count, dtype=np.int64)
                part = lay.part[orig]
                for p in np.unique(part):
                    sel = part == p
                    nodes = shards.PartNodes(
                        id=lay.new_id[orig[sel]], orig_id=orig[sel],
                        feat=None if batch.feat is None else batch.feat[sel],
                        label=None if batch.label is None else batch.label[sel],
                        masks={m: v[sel] for m, v in batch.masks.items()},
                        target=None if batch.target is None else batch.target[sel],
                    )
                    writers[p].write(shards.nodes_table(nodes))
                    if "train_mask" in batch.masks:
                        train[p] += int(batch.masks["train_mask"][sel].sum())
                update(batch.start + count)
        metas = [w.close() for w in writers]
    except BaseException:
        for w in writers:
            w.abort()
        raise
    for p, meta in enumerate(metas):
        rows[p]["nodes"] = meta["rows"]
        rows[p]["train_nodes"] = int(train[p])
    return metas


def write_edges_and_halo(ctx: Context, lay: StreamLayout, p: int, ref: shards.PartRef,
                         row: dict) -> tuple[dict, dict]:
    """The part's edges table (its own edges in id order, then its edges into other parts
    in id order) and halo table (the other parts' nodes those edges touch)."""
    lo, hi = lay.node_ranges[p]
    elo, ehi = lay.edge_ranges[p]
    foreign = np.zeros(lay.new_id.shape[0], dtype=np.bool_)
    chunk = ctx.plan.chunk_edges
    writer = shards.TableWriter(ref.table_path(shards.EDGES), shards.EDGES_SCHEMA)
    try:
        s_path, d_path = lay.inner(p)
        for (start, src), (_s, dst) in zip(_maybe_chunks(s_path, ehi - elo, chunk),
                                           _maybe_chunks(d_path, ehi - elo, chunk)):
            outside = (src < lo) | (src >= hi)
            foreign[src[outside]] = True
            writer.write(shards.edges_table(shards.PartEdges(
                src=src, dst=dst, eid=np.arange(elo + start, elo + start + src.shape[0], dtype=np.int64),
                in_part=np.ones(src.shape[0], dtype=np.bool_))))
        out = 0
        for owner in range(lay.num_parts):
            s_path, d_path, e_path = lay.out(p, owner)
            if not s_path.exists():
                continue
            total = s_path.stat().st_size // 8
            for (_a, src), (_b, dst), (_c, eid) in zip(_maybe_chunks(s_path, total, chunk),
                                                      _maybe_chunks(d_path, total, chunk),
                                                      _maybe_chunks(e_path, total, chunk)):
                foreign[dst] = True
                writer.write(shards.edges_table(shards.PartEdges(
                    src=src, dst=dst, eid=eid, in_part=np.zeros(src.shape[0], dtype=np.bool_))))
            out += total
        edge_meta = writer.close()
    except BaseException:
        writer.abort()
        raise
    halo_id = np.flatnonzero(foreign)
    del foreign
    halo_orig = lay.node_order[halo_id]
    halo = shards.PartHalo(id=halo_id, orig_id=halo_orig, owner=lay.part[halo_orig].astype(np.int64))
    halo_writer = shards.TableWriter(ref.table_path(shards.HALO), shards.HALO_SCHEMA)
    halo_writer.write(shards.halo_table(halo))
    row.update(edges=ehi - elo, out_edges=out, halo_nodes=int(halo_id.shape[0]))
    return edge_meta, halo_writer.close()


def _maybe_chunks(path: Path, total: int, chunk: int):
    if total == 0 or not path.exists():
        return iter(())
    return chunks(path, np.int64, total, chunk)


def write_assignment(lay: StreamLayout, staged: Path, chunk: int) -> str:
    writer = shards.TableWriter(staged / shards.ASSIGNMENT, shards.ASSIGNMENT_SCHEMA)
    n = lay.new_id.shape[0]
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        writer.write(shards.assignment_table(np.arange(start, stop, dtype=np.int64), lay.new_id[start:stop],
                                             lay.part[start:stop]))
    return writer.close()["sha256"]
