"""A custom model without `forward_layer` (tests: inference over whole neighbourhoods)."""

import torch
from torch import nn

from distgnn.trainer.model import mean_aggregate


class MeanMLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        widths = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.lins = nn.ModuleList(nn.Linear(2 * i, o) for i, o in zip(widths[:-1], widths[1:]))

    def forward(self, layers, x):
        h = x
        for k, (layer, lin) in enumerate(zip(layers, self.lins)):
            h = lin(torch.cat([h[: layer.num_dst], mean_aggregate(layer, h)], dim=1))
            if k < len(self.lins) - 1:
                h = torch.relu(h)
        return h


def build(config):
    return MeanMLP(config.in_dim, config.hidden, config.num_classes, config.num_layers)


NOT_A_FACTORY = 3
