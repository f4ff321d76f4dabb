"""What the model's first layer reads for a node: its features, a learnable embedding, or both.

`--node-embedding DIM` gives every node DIM learnable values (DGL's `DistEmbedding`, sharded
with the graph servers like the features), trained by DGL's distributed sparse optimizer:
only the rows a batch used are updated, and their gradients travel to the trainers that own
them. A graph without features trains on embeddings alone.

Features are fetched on the sampling thread with the batch; embedding rows are looked up on
the training thread, where autograd records them for the sparse optimizer.
"""

from __future__ import annotations

import torch

SPARSE_OPTIMIZERS = ("adam", "adagrad")
_CHUNK = 1 << 16


def _uniform(shape, dtype):
    # small random rows: every node starts distinguishable, none dominates a sum
    return torch.empty(shape, dtype=dtype).uniform_(-0.1, 0.1)


class NodeInputs:
    """The per-node input rows of one run."""

    def __init__(self, g, *, feat_dim: int, embedding_dim: int, name: str) -> None:
        import dgl

        self.feat = g.ndata["feat"] if feat_dim else None
        self.feat_dim = feat_dim
        self.embedding_dim = embedding_dim
        self.num_nodes = int(g.num_nodes())
        # created by every trainer together (DGL makes it a collective)
        self.embedding = (dgl.distributed.DistEmbedding(self.num_nodes, embedding_dim, name=name, init_func=_uniform)
                          if embedding_dim else None)

    @property
    def width(self) -> int:
        return self.feat_dim + self.embedding_dim

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """The feature part (empty when the graph has none): fetched with the batch."""
        if self.feat is None:
            return torch.empty(len(ids), 0)
        return self.feat[ids]

    def complete(self, x: torch.Tensor, ids: torch.Tensor, device: torch.device) -> torch.Tensor:
        """x (the batch's features, on device) with the embedding rows of `ids` appended;
        under autograd the rows are recorded for the sparse optimizer."""
        if self.embedding is None:
            return x
        rows = self.embedding(ids, device=device)
        return torch.cat([x, rows.to(x.dtype)], dim=1) if x.shape[1] else rows

    def __getitem__(self, ids: torch.Tensor) -> torch.Tensor:
        """Whole input rows, no gradient: layer-wise inference reads these."""
        with torch.no_grad():
            return self.complete(self.features(ids), ids, torch.device("cpu"))

    def make_optimizer(self, kind: str, lr: float):
        import dgl

        if self.embedding is None:
            return None
        make = dgl.distributed.optim.SparseAdam if kind == "adam" else dgl.distributed.optim.SparseAdagrad
        return make([self.embedding], lr=lr)

    # -- checkpoints: every row, gathered by rank 0 ------------------------------------------

    def state(self) -> torch.Tensor | None:
        """All embedding rows (num_nodes x dim), read in chunks; None without embeddings."""
        if self.embedding is None:
            return None
        weight = self.embedding.weight
        return torch.cat([weight[torch.arange(s, min(s + _CHUNK, self.num_nodes))]
                          for s in range(0, self.num_nodes, _CHUNK)])

    def load(self, rows: torch.Tensor) -> None:
        """Write every row back (one rank calls this; the others wait at a barrier)."""
        weight = self.embedding.weight
        for s in range(0, self.num_nodes, _CHUNK):
            ids = torch.arange(s, min(s + _CHUNK, self.num_nodes))
            weight[ids] = rows[ids]
