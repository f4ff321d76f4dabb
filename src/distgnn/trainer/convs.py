"""GCN and GAT layers over sampled layers (`LayerGraph`), in plain PyTorch.

Like the SAGE layer in `model`, nothing here imports dgl: the same code runs on CPU and
GPU under autocast. Each layer computes what DGL's own layer computes on the block with a
self-loop added to every destination (tests/test_model.py checks both against
dgl.nn.GraphConv and dgl.nn.GATConv on DGL-built blocks). Sampled blocks have no self-loops;
without them a GCN or GAT layer would ignore the node's own features, and DGL's layers
refuse destinations with no in-edge.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from distgnn.trainer.model import LayerGraph, sparse_product


def with_self_loops(layer: LayerGraph) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's edges plus one edge i -> i for every destination i (sources first)."""
    loops = torch.arange(layer.num_dst, device=layer.dst.device, dtype=torch.int64)
    return torch.cat([layer.src, loops]), torch.cat([layer.dst, loops])


def gcn_matrix(layer: LayerGraph) -> torch.Tensor:
    """The num_dst x num_src CSR matrix of GCN's symmetric normalisation over the layer with
    self-loops: out_degree(src)^-1/2 * in_degree(dst)^-1/2 at every edge, degrees counted
    within the layer, as dgl.nn.GraphConv(norm='both') counts them on a block."""
    src, dst = with_self_loops(layer)
    out_deg = torch.bincount(src, minlength=layer.num_src).clamp(min=1).to(torch.float32)
    in_deg = torch.bincount(dst, minlength=layer.num_dst).clamp(min=1).to(torch.float32)
    order = torch.argsort(dst, stable=True)
    src, dst = src[order], dst[order]
    crow = torch.zeros(layer.num_dst + 1, dtype=torch.int64, device=dst.device)
    torch.cumsum(torch.bincount(dst, minlength=layer.num_dst), 0, out=crow[1:])
    values = out_deg[src].rsqrt() * in_deg[dst].rsqrt()
    return torch.sparse_csr_tensor(crow, src, values, size=(layer.num_dst, layer.num_src))


class GCNLayer(nn.Module):
    """out = D_in^-1/2 A D_out^-1/2 h W + b over the layer with self-loops."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, layer: LayerGraph, h: torch.Tensor) -> torch.Tensor:
        if h.shape[0] != layer.num_src:
            raise ValueError(f"GCNLayer got {h.shape[0]} input rows for a layer with {layer.num_src} source nodes")
        adj = gcn_matrix(layer)
        # The narrower side goes through the sparse product, as GraphConv does.
        if self.in_dim > self.out_dim:
            return sparse_product(adj, h @ self.weight.to(h.dtype)) + self.bias
        return sparse_product(adj, h) @ self.weight.to(h.dtype) + self.bias


def edge_softmax(dst: torch.Tensor, scores: torch.Tensor, num_dst: int) -> torch.Tensor:
    """Softmax of per-edge scores [E, H] over each destination's in-edges."""
    index = dst.unsqueeze(1).expand_as(scores)
    top = torch.full((num_dst, scores.shape[1]), float("-inf"), device=scores.device, dtype=scores.dtype)
    # The shift only keeps exp() in range; softmax does not depend on it, so no gradient flows through it.
    top = top.scatter_reduce(0, index, scores.detach(), reduce="amax", include_self=True)
    weights = torch.exp(scores - top[dst])
    total = torch.zeros_like(top).index_add_(0, dst, weights)
    return weights / total[dst]


class GATLayer(nn.Module):
    """Graph attention with `heads` heads of `out_dim` each; output [num_dst, heads, out_dim].

    The computation of dgl.nn.GATConv(in_dim, out_dim, heads) (no feature or attention
    dropout, no residual, LeakyReLU slope 0.2, a bias per output). Attention scores, softmax
    and the weighted sum run in float32 whatever the autocast type: a softmax over
    hundreds of in-edges in fp16 loses the small weights.
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.heads = in_dim, out_dim, heads
        self.negative_slope = negative_slope
        self.fc = nn.Linear(in_dim, heads * out_dim, bias=False)
        self.attn_src = nn.Parameter(torch.empty(1, heads, out_dim))
        self.attn_dst = nn.Parameter(torch.empty(1, heads, out_dim))
        self.bias = nn.Parameter(torch.zeros(heads * out_dim))
        gain = nn.init.calculate_gain("relu")
        for weight in (self.fc.weight, self.attn_src, self.attn_dst):
            nn.init.xavier_normal_(weight, gain=gain)

    def forward(self, layer: LayerGraph, h: torch.Tensor) -> torch.Tensor:
        if h.shape[0] != layer.num_src:
            raise ValueError(f"GATLayer got {h.shape[0]} input rows for a layer with {layer.num_src} source nodes")
        projected = self.fc(h)
        src, dst = with_self_loops(layer)
        with torch.autocast(device_type=h.device.type, enabled=False):
            feat = projected.float().view(-1, self.heads, self.out_dim)
            score_src = (feat * self.attn_src).sum(-1)
            score_dst = (feat[: layer.num_dst] * self.attn_dst).sum(-1)
            scores = F.leaky_relu(score_src[src] + score_dst[dst], self.negative_slope)
            attention = edge_softmax(dst, scores, layer.num_dst)
            messages = feat[src] * attention.unsqueeze(-1)
            out = torch.zeros(layer.num_dst, self.heads, self.out_dim, device=h.device, dtype=torch.float32)
            out = out.index_add(0, dst, messages) + self.bias.float().view(1, self.heads, self.out_dim)
        return out.to(projected.dtype)
