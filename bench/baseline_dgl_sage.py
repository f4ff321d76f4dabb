"""The baseline trainer of bench/train.py, written the way DGL's distributed GraphSAGE example is.

dgl.nn.SAGEConv on DGL blocks, DistNodeDataLoader, fp32, Adam, features and labels pulled from
DistGraph inside the loop. It joins the same cluster as our `train` (same servers, same shards,
same torchrun), so the comparison isolates the training loop. Run under torch.distributed.run.
Prints one JSON line per epoch on rank 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class DGLSage(nn.Module):
    def __init__(self, in_feats: int, hidden: int, n_classes: int, n_layers: int, dropout: float) -> None:
        import dgl.nn as dglnn

        super().__init__()
        dims = [in_feats] + [hidden] * (n_layers - 1) + [n_classes]
        self.layers = nn.ModuleList(dglnn.SAGEConv(a, b, "mean") for a, b in zip(dims[:-1], dims[1:]))
        self.dropout = nn.Dropout(dropout)

    def forward(self, blocks, x):
        h = x
        for i, (layer, block) in enumerate(zip(self.layers, blocks)):
            h = layer(block, h)
            if i != len(self.layers) - 1:
                h = self.dropout(F.relu(h))
        return h


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shards", required=True)
    p.add_argument("--ip-config", required=True)
    p.add_argument("--servers-per-host", type=int, default=1)
    p.add_argument("--samplers", type=int, default=0)
    p.add_argument("--fanouts", default="10,25")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--metrics-port", default="0")  # accepted for launcher compatibility; unused
    args, _ = p.parse_known_args()

    import dgl
    import torch.distributed as dist

    from distgnn.partition import shards

    from distgnn.ip_config import parse_ip_config
    from distgnn.trainer.cluster import collective_env, host_index

    manifest = shards.read_manifest(args.shards)
    # The one piece of our cluster set-up the baseline needs to connect at all on hosts
    # that share a hostname: Gloo pinned to the host's ip_config interface.
    os.environ.update(collective_env(parse_ip_config(args.ip_config)[host_index()].address))
    os.environ.update({"DGL_DIST_MODE": "distributed", "DGL_ROLE": "client",
                       "DGL_NUM_SAMPLER": str(args.samplers), "DGL_NUM_SERVER": str(args.servers_per_host),
                       "DGL_GROUP_ID": "0"})
    dgl.distributed.initialize(args.ip_config)
    dist.init_process_group("gloo")
    g = dgl.distributed.DistGraph(manifest.graph_name)
    pb = g.get_partition_book()
    train_nid = dgl.distributed.node_split(g.ndata["train_mask"], pb, force_even=True)
    val_nid = dgl.distributed.node_split(g.ndata["val_mask"], pb, force_even=True)
    fanouts = [int(f) for f in args.fanouts.split(",")]
    sampler = dgl.dataloading.NeighborSampler(fanouts)
    loader = dgl.dataloading.DistNodeDataLoader(g, train_nid, sampler, batch_size=args.batch_size,
                                                shuffle=True, drop_last=False)
    model = DGLSage(manifest.schema.feat_dim, args.hidden, manifest.schema.num_classes, len(fanouts), args.dropout)
    model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    for epoch in range(args.epochs):
        model.train()
        t0 = time.time()
        seeds_seen = 0
        for input_nodes, seeds, blocks in loader:
            x = g.ndata["feat"][input_nodes]
            y = g.ndata["label"][seeds].long()
            loss = F.cross_entropy(model(blocks, x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seeds_seen += len(seeds)
        epoch_s = time.time() - t0
        model.eval()
        correct = total = 0
        with torch.no_grad():
            vloader = dgl.dataloading.DistNodeDataLoader(g, val_nid, sampler, batch_size=args.batch_size)
            for input_nodes, seeds, blocks in vloader:
                pred = model.module(blocks, g.ndata["feat"][input_nodes]).argmax(1)
                correct += int((pred == g.ndata["label"][seeds]).sum())
                total += len(seeds)
        counts = torch.tensor([correct, total, seeds_seen, epoch_s], dtype=torch.float64)
        dist.all_reduce(counts)
        if dist.get_rank() == 0:
            world = dist.get_world_size()
            print(json.dumps({"baseline_epoch": epoch, "epoch_s": counts[3].item() / world,
                              "seeds_per_s_per_trainer": float(counts[2] / counts[3]),
                              "val_acc": float(counts[0] / counts[1])}), flush=True)
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:  # noqa: BLE001 - DGL's exit barrier would hang the peers (DGL-NOTES pitfall 5)
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code) if code else sys.exit(0)
