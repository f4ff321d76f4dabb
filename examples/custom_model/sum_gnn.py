"""A model of your own for `train --model sum_gnn:build` (see docs/custom-models.md).

A GIN-style network: each layer sums the in-neighbours' rows, adds the node's own row scaled
by (1 + eps), and passes the result through a two-layer MLP. Plain PyTorch over the sampled
layers' edge tensors, so it runs on CPU and GPU, under autocast too.

Copy this file next to your project, change the layers, and point the trainers at it:
    launch ... --env PYTHONPATH=/path/to/folder -- train --model sum_gnn:build ...
"""

from __future__ import annotations

import torch
from torch import nn


class SumLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.eps = nn.Parameter(torch.zeros(1))
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))

    def forward(self, layer, h: torch.Tensor) -> torch.Tensor:
        # layer.src/dst: local edge ids; the destinations are the first layer.num_dst rows of h.
        total = torch.zeros(layer.num_dst, h.shape[1], device=h.device, dtype=h.dtype)
        total = total.index_add(0, layer.dst, h[layer.src])
        return self.mlp((1 + self.eps) * h[: layer.num_dst] + total)


class SumGNN(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        widths = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(SumLayer(i, o) for i, o in zip(widths[:-1], widths[1:]))
        self.dropout = nn.Dropout(dropout)

    def forward_layer(self, i: int, layer, h: torch.Tensor) -> torch.Tensor:
        """One layer alone: lets batch inference go layer by layer over all neighbours."""
        h = self.layers[i](layer, h)
        return h if i == len(self.layers) - 1 else self.dropout(torch.relu(h))

    def forward(self, layers, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, layer in enumerate(layers):
            h = self.forward_layer(i, layer, h)
        return h


def build(config) -> nn.Module:
    """The factory: `config` is distgnn's ModelConfig (in_dim, hidden, num_classes, num_layers, dropout, ...)."""
    return SumGNN(config.in_dim, config.hidden, config.num_classes, config.num_layers, config.dropout)
