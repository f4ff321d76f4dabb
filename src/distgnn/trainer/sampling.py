"""Mini-batches from the distributed graph: DGL samples on CPU, we hand plain tensors to the model.

DGL from PyPI is CPU-only, so a DGL block never reaches the GPU: each block is turned into a
`LayerGraph` of edge-index tensors, which the DGL-free model moves to its device.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from queue import Empty, Full, Queue
from typing import Iterator

import torch

from distgnn.trainer.features import FeatureCache
from distgnn.trainer.model import LayerGraph
from distgnn.trainer.relabel import MAX_TABLE_NODES, NodeRelabeler


@dataclass
class Batch:
    layers: list[LayerGraph]
    x: torch.Tensor
    y: torch.Tensor
    seeds: torch.Tensor
    """Global (renumbered) ids of the output nodes."""
    input_nodes: torch.Tensor
    """Global ids of the rows of x (learnable embeddings are looked up by them)."""
    sampled_edges: int
    remote_bytes: int
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in 'sample' and 'fetch' for this batch."""


@dataclass(frozen=True, eq=False)
class SampledLayer:
    """One sampled block: the model's `LayerGraph` plus the global ids a block carries."""

    graph: LayerGraph
    """Local edge ids, with the mean-aggregation matrix already built."""
    src_nodes: torch.Tensor
    """int64[num_src]: global id of each local source node (the first num_dst are the seeds)."""
    eids: torch.Tensor
    """int64[E]: global id of each edge."""

    @property
    def dst_nodes(self) -> torch.Tensor:
        return self.src_nodes[: self.graph.num_dst]


def _layer(nodes, local_src, local_dst, num_dst: int, eids) -> SampledLayer:
    graph = LayerGraph(src=local_src, dst=local_dst, num_src=int(nodes.numel()), num_dst=num_dst)
    # Built here, on the sampling thread, so the train step finds it ready.
    return SampledLayer(graph=graph.with_mean_matrix(), src_nodes=nodes, eids=eids)


class LayerSampler:
    """Multi-layer neighbour sampling for `DistNodeDataLoader`, handing out `SampledLayer`s.

    DGL's NeighborSampler samples each layer with `g.sample_neighbors` and then renumbers it
    with `to_block` into a DGL block, which the model cannot use as it is. This sampler makes
    the same calls to `sample_neighbors` (the graph servers and part-local sampling are
    unchanged) and renumbers with a `NodeRelabeler` straight into the model's tensors, in the
    same node order as `to_block`. fanout -1 takes every in-neighbour.
    """

    def __init__(self, fanouts: tuple[int, ...], num_nodes: int) -> None:
        self.fanouts = tuple(int(f) for f in fanouts)
        self.relabeler = NodeRelabeler(num_nodes) if num_nodes <= MAX_TABLE_NODES else None

    def sample_blocks(self, g, seed_nodes: torch.Tensor, exclude_eids=None, exclude_pairs=None):
        """exclude_pairs: keys (src * num_nodes + dst) of edges to drop from every sampled
        layer, after sampling, as DGL's samplers drop excluded edges (link prediction)."""
        import dgl

        if exclude_eids is not None:
            raise ValueError("LayerSampler excludes edges by pair (exclude_pairs), not by id")
        output_nodes = seed_nodes
        layers: list[SampledLayer] = []
        num_nodes = int(g.num_nodes())
        for fanout in reversed(self.fanouts):
            frontier = g.sample_neighbors(seed_nodes, fanout)
            if exclude_pairs is not None and exclude_pairs.numel():
                src, dst = frontier.edges()
                drop = torch.isin(src.long() * num_nodes + dst.long(), exclude_pairs)
                if bool(drop.any()):
                    frontier = dgl.remove_edges(frontier, torch.nonzero(drop).squeeze(1))
            eids = frontier.edata[dgl.EID]
            if self.relabeler is None:
                block = dgl.to_block(frontier, seed_nodes)
                local_src, local_dst = block.edges()
                nodes = block.srcdata[dgl.NID]
            else:
                src, dst = frontier.edges()
                nodes, local_src, local_dst = (
                    torch.from_numpy(a) for a in self.relabeler.relabel(seed_nodes.numpy(), src.numpy(), dst.numpy())
                )
            layers.insert(0, _layer(nodes, local_src, local_dst, int(seed_nodes.numel()), eids))
            seed_nodes = nodes
        return seed_nodes, output_nodes, layers


def own_node_range(pb) -> tuple[int, int]:
    """[start, end) of the node ids a partition book's own part holds ((0, 0) when none);
    ValueError when they are not one contiguous range (every distgnn shard's are)."""
    own = pb.partid2nids(pb.partid)
    lo, hi = (int(own[0]), int(own[-1]) + 1) if len(own) else (0, 0)
    if hi - lo != len(own):
        raise ValueError(f"part {pb.partid} does not own one contiguous node range")
    return lo, hi


class PartLocality:
    """Answers 'how many of these nodes live on another host' to count remote feature bytes.

    Every part owns one contiguous range of node ids (the shard format renumbers them so),
    so two comparisons per id answer it, with no partition-book lookup per batch.
    """

    def __init__(self, g) -> None:
        self.lo, self.hi = own_node_range(g.get_partition_book())

    def remote_count(self, nodes: torch.Tensor) -> int:
        local = int(((nodes >= self.lo) & (nodes < self.hi)).sum())
        return int(nodes.numel()) - local


def make_loader(g, nids: torch.Tensor, fanouts: tuple[int, ...], batch_size: int, *, shuffle: bool):
    """DGL's DistNodeDataLoader over `nids`, yielding (input nodes, seeds, [SampledLayer]).

    fanouts run from the input layer outwards, as DGL's NeighborSampler takes them."""
    import dgl

    # DGL 2.1's DistDataLoader takes a batch's ids out of its dataset one index at a time
    # and calls .item() on each: 1.4 ms a 1,000-seed batch on a tensor, 0.4 ms on the same
    # ids as a NumPy array, whose scalars .item() turns into the same Python ints. A copy,
    # made before the loader exists: with sampler processes DGL hands the loader's id tensor
    # to them, and pickling it moves its memory into shared memory from a background thread,
    # which would leave a NumPy view of it reading freed memory.
    ids = nids.numpy().copy()
    loader = dgl.dataloading.DistNodeDataLoader(
        g, nids, LayerSampler(fanouts, int(g.num_nodes())), batch_size=batch_size, shuffle=shuffle, drop_last=False
    )
    if isinstance(getattr(loader, "dataset", None), torch.Tensor) and torch.equal(loader.dataset, torch.from_numpy(ids)):
        loader.dataset = ids
    return loader


def prefetched(batches: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Produce batches on a background thread, `depth` ahead of the consumer.

    Sampling and feature fetch are mostly waiting on graph servers (RPC) and C++ code, and the
    train step mostly runs torch kernels; both release the GIL, so a thread overlaps them. All
    DGL calls of an epoch happen on this one thread, never concurrently with the caller.
    Each batch's `timings["wait"]` is how long the consumer was blocked waiting for it.
    """
    if depth <= 0:
        yield from batches
        return
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        queue.put(batch, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(done)
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
            queue.put(err)

    thread = threading.Thread(target=produce, name="distgnn-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            t0 = time.perf_counter()
            item = queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            item.timings["wait"] = time.perf_counter() - t0
            yield item
    finally:
        # The consumer may stop early (DDP step limit): let the producer finish its current
        # batch and exit before anyone else touches DGL.
        stop.set()
        while thread.is_alive():
            try:
                queue.get(timeout=0.1)
            except Empty:
                pass
        thread.join()


def feature_fetcher(g):
    """ids -> feature rows, or empty rows for a graph without features (--node-embedding)."""
    try:
        return g.ndata["feat"].__getitem__
    except KeyError:
        return lambda ids: torch.empty(len(ids), 0)


def iterate_batches(g, loader, locality: PartLocality, *, feat_bytes_per_node: int,
                    cache: FeatureCache | None = None, target: bool = False) -> Iterator[Batch]:
    """Yield batches with their sampling and feature-fetch time measured separately.

    With a cache, cached remote rows come from memory and only the rest is fetched;
    `remote_bytes` counts what still crossed the network.
    """
    fetch = feature_fetcher(g)
    # y: class labels (int64), or regression targets (float32) with target=True
    label = g.ndata["target" if target else "label"]
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            input_nodes, seeds, sampled = next(it)
        except StopIteration:
            return
        t1 = time.perf_counter()
        x, hits = (fetch(input_nodes), 0) if cache is None else cache.gather(input_nodes, fetch)
        y = label[seeds] if target else label[seeds].long()
        t2 = time.perf_counter()
        yield Batch(
            layers=[layer.graph for layer in sampled],
            x=x,
            y=y,
            seeds=seeds,
            input_nodes=input_nodes,
            sampled_edges=sum(layer.graph.num_edges for layer in sampled),
            remote_bytes=(locality.remote_count(input_nodes) - hits) * feat_bytes_per_node,
            timings={"sample": t1 - t0, "fetch": t2 - t1},
        )
