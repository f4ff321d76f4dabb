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


@dataclass
class Batch:
    layers: list[LayerGraph]
    x: torch.Tensor
    y: torch.Tensor
    seeds: torch.Tensor
    """Global (renumbered) ids of the output nodes."""
    sampled_edges: int
    remote_bytes: int
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in 'sample' and 'fetch' for this batch."""


def blocks_to_layers(blocks) -> list[LayerGraph]:
    layers = []
    for block in blocks:
        src, dst = block.edges()
        layer = LayerGraph(src=src, dst=dst, num_src=block.num_src_nodes(), num_dst=block.num_dst_nodes())
        # Built here, on the sampling thread, so the train step finds it ready.
        layers.append(layer.with_mean_matrix())
    return layers


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


def make_sampler(fanouts: tuple[int, ...]):
    import dgl

    # DGL's NeighborSampler takes fanouts from the input layer outwards, as our --fanouts does.
    return dgl.dataloading.NeighborSampler(list(fanouts))


def make_loader(g, nids: torch.Tensor, fanouts: tuple[int, ...], batch_size: int, *, shuffle: bool):
    import dgl

    return dgl.dataloading.DistNodeDataLoader(
        g, nids, make_sampler(fanouts), batch_size=batch_size, shuffle=shuffle, drop_last=False
    )


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


def iterate_batches(g, loader, locality: PartLocality, *, feat_bytes_per_node: int,
                    cache: FeatureCache | None = None) -> Iterator[Batch]:
    """Yield batches with their sampling and feature-fetch time measured separately.

    With a cache, cached remote rows come from memory and only the rest is fetched;
    `remote_bytes` counts what still crossed the network.
    """
    feat = g.ndata["feat"]
    label = g.ndata["label"]
    fetch = feat.__getitem__
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            input_nodes, seeds, blocks = next(it)
        except StopIteration:
            return
        t1 = time.perf_counter()
        x, hits = (fetch(input_nodes), 0) if cache is None else cache.gather(input_nodes, fetch)
        y = label[seeds].long()
        t2 = time.perf_counter()
        yield Batch(
            layers=blocks_to_layers(blocks),
            x=x,
            y=y,
            seeds=seeds,
            sampled_edges=sum(int(b.num_edges()) for b in blocks),
            remote_bytes=(locality.remote_count(input_nodes) - hits) * feat_bytes_per_node,
            timings={"sample": t1 - t0, "fetch": t2 - t1},
        )
