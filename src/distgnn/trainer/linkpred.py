"""Link prediction: edge batches with uniform negatives, a pairwise scorer, and ranking metrics.

Training positives are the edges the graph servers hold, which `partition --link-split` left
to training; validation and test pairs (and their reverses) are not in that graph at all. A
batch takes B of this trainer's edges (u, v), draws K uniform destinations per positive
(u, v'), and samples the neighbourhoods of every node involved with the same `LayerSampler`
as node classification. Like DGL's `exclude='reverse_id'` on a symmetric graph, the batch's
own edges and their reverses are dropped from the sampled neighbourhoods, so a pair's
score never sees the edge it must predict.

Evaluation scores every held-out pair against its EVAL_NEGATIVES fixed negatives with
embeddings computed layer by layer over all neighbours: ROC-AUC over all positive and
negative scores, MRR and Hits@k of each positive among its own negatives.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from distgnn.trainer.model import LayerGraph

SCORERS = ("dot", "mlp")
HITS_AT = (10, 50)
VAL_METRIC = "mrr"
"""What early stopping and the best checkpoint follow."""


class Scorer(nn.Module):
    """score(h_u, h_v): the dot product, or an MLP over h_u * h_v (asymmetric pairs welcome)."""

    def __init__(self, kind: str, dim: int) -> None:
        super().__init__()
        if kind not in SCORERS:
            raise ValueError(f"scorer {kind!r}: expected one of {', '.join(SCORERS)}")
        self.kind = kind
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1)) if kind == "mlp" else None

    def forward(self, h_u: torch.Tensor, h_v: torch.Tensor) -> torch.Tensor:
        if self.mlp is None:
            return (h_u * h_v).sum(-1)
        return self.mlp(h_u * h_v).squeeze(-1)


class LinkModel(nn.Module):
    """The encoder (any node model) and the scorer, trained as one module under DDP."""

    def __init__(self, encoder: nn.Module, scorer: Scorer) -> None:
        super().__init__()
        self.encoder = encoder
        self.scorer = scorer

    def forward(self, layers: list[LayerGraph], x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Scores of the pairs (u[i], v[i]), given as rows of the batch's seed nodes."""
        h = self.encoder(layers, x)
        # fp32 scores: a dot product of wide bf16 rows loses the low bits the loss needs.
        h = h.float()
        return self.scorer(h[u], h[v])


def link_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(scores.float(), labels)


@dataclass
class EdgeBatch:
    layers: list[LayerGraph]
    x: torch.Tensor
    y: torch.Tensor
    """1.0 for the positive pairs, 0.0 for the negatives."""
    pairs: tuple[torch.Tensor, torch.Tensor]
    """(u, v): rows of the seed nodes of each scored pair, positives first."""
    seeds: torch.Tensor
    input_nodes: torch.Tensor
    sampled_edges: int
    remote_bytes: int
    timings: dict[str, float] = field(default_factory=dict)


def my_edges(g) -> torch.Tensor:
    """This trainer's share of the training edges; even across trainers so DDP steps line up."""
    from distgnn.trainer.split import my_share

    every = torch.ones(g.num_edges(), dtype=torch.bool)
    return my_share(every, g.num_edges(), g.get_partition_book(), "edge")


def pair_keys(src: torch.Tensor, dst: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """One int64 per directed pair, for membership tests."""
    return src.long() * num_nodes + dst.long()


def edge_batches(g, sampler, eids: torch.Tensor, *, batch_size: int, negatives: int, shuffle: bool,
                 locality, feat_bytes_per_node: int, cache=None) -> Iterator[EdgeBatch]:
    """One epoch of batches over `eids`, with `negatives` uniform negatives per positive."""
    from distgnn.trainer.sampling import feature_fetcher

    fetch = feature_fetcher(g)
    n = int(g.num_nodes())
    order = eids[torch.randperm(len(eids))] if shuffle else eids
    for start in range(0, len(order), batch_size):
        t0 = time.perf_counter()
        chunk = order[start:start + batch_size]
        u, v = g.find_edges(chunk)
        u, v = u.long(), v.long()
        neg_v = torch.randint(0, n, (u.numel() * negatives,), dtype=torch.int64)
        neg_u = u.repeat_interleave(negatives)
        seeds, inverse = torch.unique(torch.cat([u, v, neg_v]), return_inverse=True)
        b = u.numel()
        rows_u = torch.cat([inverse[:b], inverse[:b].repeat_interleave(negatives)])
        rows_v = torch.cat([inverse[b:2 * b], inverse[2 * b:]])
        # the batch's own edges and their reverses never carry messages to the pairs they label
        exclude = torch.cat([pair_keys(u, v, n), pair_keys(v, u, n)])
        input_nodes, _, sampled = sampler.sample_blocks(g, seeds, exclude_pairs=exclude)
        t1 = time.perf_counter()
        x, hits = (fetch(input_nodes), 0) if cache is None else cache.gather(input_nodes, fetch)
        t2 = time.perf_counter()
        yield EdgeBatch(
            layers=[layer.graph for layer in sampled],
            x=x,
            y=torch.cat([torch.ones(b), torch.zeros(b * negatives)]),
            pairs=(rows_u, rows_v),
            seeds=seeds,
            input_nodes=input_nodes,
            sampled_edges=sum(layer.graph.num_edges for layer in sampled),
            remote_bytes=(locality.remote_count(input_nodes) - hits) * feat_bytes_per_node,
            timings={"sample": t1 - t0, "fetch": t2 - t1},
        )


# ---------------------------------------------------------------------------- metrics


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve: the chance a positive outscores a negative (ties count half)."""
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], scores.size]
    avg = (starts + ends + 1) / 2.0  # 1-based mean rank of each tie group
    ranks[order] = np.repeat(avg, ends - starts)
    pos_rank_sum = ranks[: pos.size].sum()
    return float((pos_rank_sum - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


def ranking_metrics(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    """MRR and Hits@k of each positive among its own negatives (pos [n], neg [n, k]); a tie
    counts against the positive, so a constant scorer gets rank k + 1."""
    if pos.size == 0:
        return {"mrr": float("nan"), **{f"hits@{k}": float("nan") for k in HITS_AT}}
    rank = 1 + (neg >= pos[:, None]).sum(axis=1)
    out = {"mrr": float((1.0 / rank).mean())}
    for k in HITS_AT:
        out[f"hits@{k}"] = float((rank <= k).mean())
    return out


def link_metrics(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    """Every metric of one held-out split: auc, mrr, hits@10, hits@50."""
    return {"auc": roc_auc(pos, neg.reshape(-1)), **ranking_metrics(pos, neg)}


@torch.no_grad()
def score_pairs(embeddings, scorer: Scorer, src: np.ndarray, dst: np.ndarray, neg: np.ndarray,
                device: torch.device, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the pairs and of their negatives, embeddings read from a DistTensor.
    `chunk` pairs at a time: with 100 negatives and 128-d embeddings, 26 MB of rows."""
    pos_out, neg_out = [], []
    for start in range(0, src.size, chunk):
        # copies: the held-out tables come read-only from Arrow
        s = torch.tensor(src[start:start + chunk])
        d = torch.tensor(dst[start:start + chunk])
        nv = torch.tensor(neg[start:start + chunk])
        h_u = embeddings[s].to(device).float()
        h_v = embeddings[d].to(device).float()
        h_n = embeddings[nv.reshape(-1)].to(device).float().view(nv.shape[0], nv.shape[1], -1)
        pos_out.append(scorer(h_u, h_v).cpu().numpy())
        neg_out.append(scorer(h_u.unsqueeze(1).expand_as(h_n), h_n).cpu().numpy())
    width = neg.shape[1] if neg.ndim == 2 else 0
    if not pos_out:
        return np.empty(0, np.float32), np.empty((0, width), np.float32)
    return np.concatenate(pos_out), np.concatenate(neg_out)


def shares(count: int, rank: int, world: int) -> slice:
    """This rank's contiguous share of `count` held-out pairs."""
    per = math.ceil(count / world) if world else count
    return slice(min(count, rank * per), min(count, (rank + 1) * per))
