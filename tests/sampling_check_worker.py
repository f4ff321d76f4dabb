"""Runs in place of the trainer (launch --trainer-module sampling_check_worker): joins the
cluster like `train` does, samples real mini-batches through DistGraph and checks them
against the input graph read straight from its source. Exit 1 on the first mismatch."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shards", required=True)
    p.add_argument("--ip-config", required=True)
    p.add_argument("--servers-per-host", type=int, default=1)
    p.add_argument("--samplers", type=int, default=0)
    p.add_argument("--graph", required=True)
    p.add_argument("--fanouts", default="5,10")
    p.add_argument("--batch-size", type=int, default=256)
    args, _ = p.parse_known_args()

    from distgnn.graph import load_graph
    from distgnn.trainer.cluster import check_inputs, connect, split_nodes
    from distgnn.trainer.config import TrainConfig, parse_fanouts
    from distgnn.trainer import local_sampling
    from distgnn.trainer.features import build_cache
    from distgnn.trainer.sampling import PartLocality, make_loader

    cfg = TrainConfig(shards=args.shards, ip_config=args.ip_config, servers_per_host=args.servers_per_host,
                      samplers=args.samplers, fanouts=parse_fanouts(args.fanouts), batch_size=args.batch_size,
                      metrics_port=0)
    facts = check_inputs(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    cluster = connect(cfg, facts)
    g = cluster.g
    graph = load_graph(args.graph)
    n = graph.num_nodes
    edge_keys = np.sort(graph.src * n + graph.dst)
    orig_of = g.ndata["orig_id"]
    locality = PartLocality(g)
    # The trainer's own sampling path (graph servers install it for the requests they serve).
    if not local_sampling.install(g.local_partition, g.get_partition_book()):
        print("MISMATCH the part graph is not in distgnn's layout", flush=True)
        return 1
    edge_src, edge_dst = _edges_by_id(args.shards)
    # A small remote-feature cache (1 MiB: ~500 PubMed rows), checked like the fetch itself.
    cache = build_cache(g, g.ndata["feat"], 2**20, facts.feat_dim, (locality.lo, locality.hi))

    seeds = torch.cat([split_nodes(g, "train_mask"), split_nodes(g, "val_mask"), split_nodes(g, "test_mask")])
    loader = make_loader(g, seeds, cfg.fanouts, cfg.batch_size, shuffle=True)
    checked_edges = remote_nodes = checked_nodes = cache_hits = 0
    batches = []
    for input_nodes, batch_seeds, sampled in loader:
        batches.append(batch_seeds)
        if not torch.equal(sampled[-1].dst_nodes, batch_seeds) or not torch.equal(sampled[0].src_nodes, input_nodes):
            print("MISMATCH the sampled layers do not run from the input nodes to the batch's seeds", flush=True)
            return 1
        for layer in sampled:
            src_ids = layer.src_nodes[layer.graph.src]
            dst_ids = layer.dst_nodes[layer.graph.dst]
            u = orig_of[src_ids].numpy()
            v = orig_of[dst_ids].numpy()
            keys = u * n + v
            pos = np.searchsorted(edge_keys, keys).clip(max=len(edge_keys) - 1)
            missing = np.nonzero(edge_keys[pos] != keys)[0]
            if len(missing):
                print(f"MISMATCH sampled edge {u[missing[0]]}->{v[missing[0]]} is not in the input graph", flush=True)
                return 1
            eid = layer.eids.numpy()
            if not (np.array_equal(edge_src[eid], src_ids.numpy()) and np.array_equal(edge_dst[eid], dst_ids.numpy())):
                print("MISMATCH a sampled edge id names another edge in the shards", flush=True)
                return 1
            checked_edges += len(keys)
        orig = orig_of[input_nodes].numpy()
        fetched = g.ndata["feat"][input_nodes].numpy()
        if not np.array_equal(fetched, graph.feat[orig]):
            bad = int(np.nonzero(~(fetched == graph.feat[orig]).all(axis=1))[0][0])
            print(f"MISMATCH features of node {orig[bad]} differ from the input", flush=True)
            return 1
        if not np.array_equal(g.ndata["label"][input_nodes].numpy(), graph.label[orig]):
            print("MISMATCH labels differ from the input", flush=True)
            return 1
        served, hits = cache.gather(input_nodes, g.ndata["feat"].__getitem__)
        if not np.array_equal(served.numpy(), graph.feat[orig]):
            print("MISMATCH features served through the remote-feature cache differ from the input", flush=True)
            return 1
        cache_hits += hits
        checked_nodes += len(orig)
        remote_nodes += locality.remote_count(input_nodes)
    if not torch.equal(torch.sort(torch.cat(batches)).values, torch.sort(seeds).values):
        print("MISMATCH an epoch's batches do not hold every seed exactly once", flush=True)
        return 1
    print(f"CHECKED rank={cluster.rank} edges={checked_edges} nodes={checked_nodes} remote_nodes={remote_nodes} "
          f"cached={cache.size} cache_hits={cache_hits}", flush=True)
    return 0


def _edges_by_id(root: str) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) of every edge by its global id, in renumbered node ids, from the shards."""
    from distgnn.partition import shards

    manifest = shards.read_manifest(root)
    src = np.full(manifest.num_edges, -1, dtype=np.int64)
    dst = np.full(manifest.num_edges, -1, dtype=np.int64)
    for p in range(manifest.num_parts):
        edges = shards.read_part(shards.part_ref(root, p)).edges
        inner = np.asarray(edges.in_part, dtype=bool)
        src[edges.eid[inner]], dst[edges.eid[inner]] = edges.src[inner], edges.dst[inner]
    return src, dst


if __name__ == "__main__":
    sys.exit(main())
