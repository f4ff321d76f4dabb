"""GNN stacks (GraphSAGE, GCN, GAT) on plain edge-index tensors.

This module must not import dgl: DGL from PyPI is CPU-only and cannot be
installed next to the torch of a GPU machine, so the sampler hands over each
sampled block as a `LayerGraph` (local edge ids and sizes) and everything from
here on is ordinary PyTorch that runs the same on CPU and CUDA, under autocast.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from distgnn.errors import InputError

# torch 2.2 warns once per process that sparse CSR is "beta"; the one op used here
# (CSR x dense, with its backward) is checked against dgl.nn.SAGEConv in the tests.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)


FEATURE_NORMS = ("none", "row")


# eq=False: comparing tensor fields with == is elementwise, not a truth value.
@dataclass(frozen=True, eq=False)
class LayerGraph:
    """One sampled message-passing layer (a DGL block) as local edge indices."""

    src: torch.Tensor
    """int64[E]: source of each edge, a local id in [0, num_src)."""
    dst: torch.Tensor
    """int64[E]: destination of each edge, a local id in [0, num_dst)."""
    num_src: int
    """Number of input nodes of the layer."""
    num_dst: int
    """Number of output nodes; they are the first num_dst input nodes."""
    adj: torch.Tensor | None = None
    """The mean-aggregation matrix (num_dst x num_src, sparse CSR, 1/in-degree per edge), built
    by `with_mean_matrix` ahead of time (the sampler's thread does it) or on first use."""

    def __post_init__(self) -> None:
        # Checked here, once per batch, so a wrong block fails with its sizes
        # rather than as an index error deep inside index_add_.
        for name in ("src", "dst"):
            t = getattr(self, name)
            if t.dim() != 1 or t.dtype != torch.int64:
                raise ValueError(f"LayerGraph.{name} must be a 1-D int64 tensor, got {t.dtype} {tuple(t.shape)}")
        if self.src.shape != self.dst.shape:
            raise ValueError(f"LayerGraph src and dst differ in length: {self.src.numel()} vs {self.dst.numel()}")
        if not 0 <= self.num_dst <= self.num_src:
            raise ValueError(f"LayerGraph needs 0 <= num_dst <= num_src, got num_dst={self.num_dst} num_src={self.num_src}")

    @property
    def num_edges(self) -> int:
        return int(self.src.numel())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LayerGraph:
        return LayerGraph(
            self.src.to(device, non_blocking=non_blocking),
            self.dst.to(device, non_blocking=non_blocking),
            self.num_src,
            self.num_dst,
            None if self.adj is None else self.adj.to(device, non_blocking=non_blocking),
        )

    def with_mean_matrix(self) -> LayerGraph:
        """This layer with its mean-aggregation matrix built (idempotent)."""
        if self.adj is not None:
            return self
        build = _mean_matrix_numpy if self.dst.device.type == "cpu" else _mean_matrix_torch
        adj = build(self.src, self.dst, self.num_src, self.num_dst)
        return LayerGraph(self.src, self.dst, self.num_src, self.num_dst, adj)

    def state(self) -> dict[str, Any]:
        """Plain tensors and ints, loadable with torch.load(weights_only=True)."""
        return {"src": self.src, "dst": self.dst, "num_src": self.num_src, "num_dst": self.num_dst}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LayerGraph:
        return cls(state["src"], state["dst"], int(state["num_src"]), int(state["num_dst"]))


def _mean_matrix_torch(src: torch.Tensor, dst: torch.Tensor, num_src: int, num_dst: int) -> torch.Tensor:
    """The num_dst x num_src CSR matrix with 1/in-degree at every edge, on the edges' device."""
    degree = torch.bincount(dst, minlength=num_dst)
    crow = torch.zeros(num_dst + 1, dtype=torch.int64, device=dst.device)
    torch.cumsum(degree, 0, out=crow[1:])
    col = src
    # DGL's sampled blocks list edges grouped by destination already; sort only if not.
    if dst.numel() > 1 and bool((dst[1:] < dst[:-1]).any()):
        order = torch.argsort(dst, stable=True)
        dst, col = dst[order], col[order]
    values = (1.0 / degree.clamp(min=1).to(torch.float32))[dst]
    return torch.sparse_csr_tensor(crow, col, values, size=(num_dst, num_src))


def _mean_matrix_numpy(src: torch.Tensor, dst: torch.Tensor, num_src: int, num_dst: int) -> torch.Tensor:
    """The same matrix for CPU tensors. A distributed sampler's block lists edges as a few
    runs (one per part that sampled them), each grouped by destination. NumPy's stable sort
    is a timsort, which merges such runs in linear time: 0.6 ms for a 73,000-edge layer
    against 2.2 ms for torch's radix argsort plus gathers."""
    dst_np = dst.numpy()
    order = np.argsort(dst_np, kind="stable")
    dst_np, col = dst_np[order], src.numpy()[order]
    degree = np.bincount(dst_np, minlength=num_dst)
    crow = np.zeros(num_dst + 1, dtype=np.int64)
    np.cumsum(degree, out=crow[1:])
    values = (np.float32(1.0) / np.maximum(degree, 1).astype(np.float32))[dst_np]
    return torch.sparse_csr_tensor(
        torch.from_numpy(crow), torch.from_numpy(col), torch.from_numpy(values), size=(num_dst, num_src)
    )


def mean_aggregate(layer: LayerGraph, h_src: torch.Tensor) -> torch.Tensor:
    """Mean of the incoming source rows per destination; zero for a destination without edges.

    One sparse (CSR) matrix product with the layer's 1/in-degree matrix: the per-edge
    messages are never materialised, which made forward+backward ~3x faster than a gather
    and index_add_ on CPU.
    """
    return sparse_product(layer.with_mean_matrix().adj, h_src)


def sparse_product(adj: torch.Tensor, h_src: torch.Tensor) -> torch.Tensor:
    """adj @ h_src for a CSR matrix, differentiable in h_src. It runs in float32 with autocast
    off: low-precision sums lose the low bits of high-degree nodes, and sparse kernels lack
    bf16/fp16 variants on CPU."""
    with torch.autocast(device_type=h_src.device.type, enabled=False):
        if h_src.device.type == "cpu" and h_src.requires_grad:
            out = _CPUSparseMM.apply(adj, h_src.float())
        else:
            out = torch.sparse.mm(adj, h_src.float())
    return out.to(h_src.dtype)


def self_and_mean(layer: LayerGraph, h: torch.Tensor) -> torch.Tensor:
    """[h_dst | mean of the in-neighbours' rows], num_dst x 2*in_dim: the input of the GEMM
    that applies fc_self and fc_neigh at once when a layer aggregates first."""
    if h.device.type == "cpu" and h.requires_grad and h.dtype == torch.float32:
        adj = layer.with_mean_matrix().adj
        with torch.autocast(device_type="cpu", enabled=False):
            return _CPUSelfAndMean.apply(adj, h, layer.num_dst)
    return torch.cat([h[: layer.num_dst], mean_aggregate(layer, h)], dim=1)


def _transposed_product(adj: torch.Tensor, grad: torch.Tensor) -> np.ndarray:
    """adj^T @ grad for a CPU CSR matrix, by SciPy: a fresh, writable array.

    torch 2.2 transposes the CSR matrix into a new one for every backward: 1.7 ms of a
    1.9 ms forward+backward on a 1,000 x 9,700 layer of width 16, where SciPy's product
    with the transpose (a free CSC view of the same arrays) takes 0.1 ms.
    """
    import scipy.sparse  # CPU only; the GPU path never reaches here

    matrix = scipy.sparse.csr_array(
        (adj.values().numpy(), adj.col_indices().numpy(), adj.crow_indices().numpy()), shape=tuple(adj.shape)
    )
    return np.ascontiguousarray(matrix.T @ grad.contiguous().numpy())


class _CPUSparseMM(torch.autograd.Function):
    """adj @ h, with the gradient for h from `_transposed_product`."""

    @staticmethod
    def forward(ctx: Any, adj: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return torch.sparse.mm(adj, h)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        # Only applied to an h that requires grad (mean_aggregate), so the gradient is always owed.
        return None, torch.from_numpy(_transposed_product(ctx.adj, grad))


class _CPUSelfAndMean(torch.autograd.Function):
    """cat([h[:num_dst], adj @ h], 1) with one gradient array for h.

    Through autograd the slice and the product each return a num_src x in_dim gradient
    (the slice's all zeros past num_dst) that are then added: three passes over 10 MB on
    the benchmark's last layer. Here the seeds' rows are added into the product's gradient
    in place: 5.8 against 8.1 ms for that layer's forward and backward.
    """

    @staticmethod
    def forward(ctx: Any, adj: torch.Tensor, h: torch.Tensor, num_dst: int) -> torch.Tensor:
        ctx.adj, ctx.num_dst = adj, num_dst
        return torch.cat([h[:num_dst], torch.sparse.mm(adj, h)], dim=1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        width = grad.shape[1] // 2
        grad_h = _transposed_product(ctx.adj, grad[:, width:])
        grad_h[: ctx.num_dst] += grad[:, :width].numpy()
        return None, torch.from_numpy(grad_h), None


class ReLUDropout(nn.Module):
    """ReLU, then dropout: the activation between GraphSAGE layers, fused on CPU.

    On a 9,700 x 256 hidden layer, one CPU core, ReLU followed by torch's dropout took
    7.5 ms forward and backward; torch's boolean and uint8 kernels are not vectorised
    there, and every extra pass over a 10 MB tensor costs about a millisecond. On CPU
    in float32 this draws the mask as random bytes (eight per 64-bit word, from a
    generator seeded by torch's, so `torch.manual_seed` and checkpointed RNG states still
    decide it), folds ReLU and the 1/(1-p) scale into it with NumPy, and applies it with
    one multiply each way: 5.0 ms. Elsewhere (CUDA, autocast bf16/fp16) it is
    F.relu then F.dropout. Either way p is rounded to a multiple of 1/256 (exact for
    0.5 and 0.25; 0.1 becomes 0.1016), and `p` reports the rounded value.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.threshold = round(p * 256)
        self.p = self.threshold / 256

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return F.relu(h)
        if h.device.type == "cpu" and h.dtype == torch.float32:
            return _CPUReLUDropout.apply(h, self.threshold, 1.0 / (1.0 - self.p))
        return F.dropout(F.relu(h), self.p, training=True)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _CPUReLUDropout(torch.autograd.Function):
    """out = h * mask, where mask is 1/(1-p) where h > 0 and the entry is kept, else 0;
    the gradient is the same multiply, so only the float mask is saved."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64))
        h_np = h.detach().contiguous().numpy()
        n = h_np.size
        words = np.random.SFC64(seed).random_raw((n + 7) // 8)
        keep = words.view(np.uint8)[:n].reshape(h_np.shape) >= threshold
        keep &= h_np > 0
        mask = torch.from_numpy(np.multiply(keep, np.float32(scale), dtype=np.float32))
        ctx.save_for_backward(mask)
        return h * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None


SPARSE_MAC_COST = 6
"""How many dense-GEMM multiply-adds one multiply-add of the sparse mean aggregation is worth
on one CPU core, forward and backward (MKL's GEMM runs near the core's peak; the aggregation
is bound by scattered row reads). Set from sampled layers of PubMed and of the synthetic
benchmark graph: where (num_src - num_dst) x in_dim x out_dim was 11 or more times
E x (in_dim - out_dim), aggregating first was 1.4-3.9x faster; at 2-3 times the two were
within 10% of each other."""


def project_first(layer: LayerGraph, in_dim: int, out_dim: int, device_type: str) -> bool:
    """Whether to project every source row before aggregating (fc_neigh over num_src rows,
    messages out_dim wide) rather than aggregate the in_dim-wide rows and project only the
    num_dst means.

    Projecting first saves E x (in_dim - out_dim) sparse multiply-adds and costs
    (num_src - num_dst) x in_dim x out_dim dense ones. DGL's SAGEConv projects first whenever
    in_dim > out_dim, which suits a GPU, and that rule is kept there. On a CPU the two are
    weighed: on the benchmark's last layer (9,650 sources, 1,000 seeds, 8,700 edges,
    256 -> 16) aggregating first takes 8.3 ms forward and backward against 13.5 ms, and on
    PubMed's first layer (500 -> 128, batch 1,000) 35 against 57 ms.
    """
    if in_dim <= out_dim:
        return False
    if device_type != "cpu":
        return True
    dense = (layer.num_src - layer.num_dst) * in_dim * out_dim
    sparse = SPARSE_MAC_COST * layer.num_edges * (in_dim - out_dim)
    return dense < sparse


class SAGELayer(nn.Module):
    """GraphSAGE with mean aggregation, the computation of dgl.nn.SAGEConv(..., 'mean').

    out = fc_self(h_dst) + fc_neigh(mean of h_src over in-edges); fc_self carries the bias.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.fc_self = nn.Linear(in_dim, out_dim, bias=True)
        self.fc_neigh = nn.Linear(in_dim, out_dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        gain = nn.init.calculate_gain("relu")
        nn.init.xavier_uniform_(self.fc_self.weight, gain=gain)
        nn.init.xavier_uniform_(self.fc_neigh.weight, gain=gain)
        nn.init.zeros_(self.fc_self.bias)

    def forward(self, layer: LayerGraph, h: torch.Tensor) -> torch.Tensor:
        if h.shape[0] != layer.num_src:
            raise ValueError(f"SAGELayer got {h.shape[0]} input rows for a layer with {layer.num_src} source nodes")
        if project_first(layer, self.in_dim, self.out_dim, h.device.type):
            return self.fc_self(h[: layer.num_dst]) + mean_aggregate(layer, self.fc_neigh(h))
        # Both projections as one GEMM over [h_dst | mean]: the num_dst x out_dim sum of two
        # products is never materialised (13% less time in this layer's forward+backward on
        # a 24k x 64 -> 256 layer, one CPU thread). The weights stay two Linear modules.
        both = self_and_mean(layer, h)
        weight = torch.cat([self.fc_self.weight, self.fc_neigh.weight], dim=1)
        return F.linear(both, weight, self.fc_self.bias)


BUILTIN_MODELS = ("sage", "gcn", "gat")
"""`--model` names of the built-in stacks; anything else is `package.module:factory` (`custom`)."""


def check_architecture(model: str, hidden: int, heads: int) -> None:
    """--model, --hidden and --heads together: the trainer's config checks them before anything
    starts, ModelConfig whenever a model is built."""
    from distgnn.trainer.custom import split_spec

    if model not in BUILTIN_MODELS and not all(split_spec(model)):
        raise InputError(f"--model {model!r}: expected one of {', '.join(BUILTIN_MODELS)} or package.module:factory")
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise InputError(f"--heads {heads!r}: must be at least 1")
    if model == "gat" and hidden % heads:
        raise InputError(f"--hidden {hidden}: must be a multiple of --heads {heads} "
                         "(GAT's hidden layers join the heads' outputs)")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape of a model; what a checkpoint must agree with to be resumed. A custom model's
    factory receives this object."""

    in_dim: int
    """Input feature width."""
    hidden: int
    """Width of every hidden layer (for GAT: all heads together)."""
    num_classes: int
    """Number of outputs of the last layer."""
    num_layers: int
    """Number of message-passing layers (= number of sampled blocks per batch)."""
    dropout: float
    """Dropout probability between layers."""
    feature_norm: str = "none"
    """'row': scale each input feature row to unit L1 norm (bag-of-words/TF-IDF inputs); 'none'."""
    model: str = "sage"
    """'sage', 'gcn', 'gat', or `package.module:factory` for a model of your own."""
    heads: int = 1
    """Attention heads of every GAT layer."""

    def __post_init__(self) -> None:
        for name in ("in_dim", "hidden", "num_classes", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"model: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise InputError(f"model: dropout must be in [0, 1), got {self.dropout!r}")
        if self.feature_norm not in FEATURE_NORMS:
            raise InputError(f"--feature-norm {self.feature_norm!r}: expected one of {', '.join(FEATURE_NORMS)}")
        check_architecture(self.model, self.hidden, self.heads)

    def layer_dims(self) -> list[tuple[int, int]]:
        widths = [self.in_dim] + [self.hidden] * (self.num_layers - 1) + [self.num_classes]
        return list(zip(widths[:-1], widths[1:]))

    @property
    def builtin(self) -> bool:
        return self.model in BUILTIN_MODELS


class GNN(nn.Module):
    """A stack of SAGE, GCN or GAT layers with ReLU and dropout (one fused module) between
    them. GAT's hidden layers join their heads; its last layer averages them."""

    def __init__(
        self, in_dim: int, hidden: int, num_classes: int, num_layers: int, dropout: float,
        feature_norm: str = "none", model: str = "sage", heads: int = 1,
    ) -> None:
        super().__init__()
        self.cfg = ModelConfig(
            in_dim=in_dim, hidden=hidden, num_classes=num_classes, num_layers=num_layers, dropout=float(dropout),
            feature_norm=feature_norm, model=model, heads=heads,
        )
        if not self.cfg.builtin:
            raise InputError(f"--model {model!r}: not a built-in model (use build_model for your own)")
        dims = self.cfg.layer_dims()
        self.layers = nn.ModuleList(self._layer(i, o, last=k == len(dims) - 1) for k, (i, o) in enumerate(dims))
        self.activation = ReLUDropout(self.cfg.dropout)

    def _layer(self, in_dim: int, out_dim: int, *, last: bool) -> nn.Module:
        from distgnn.trainer import convs

        if self.cfg.model == "gcn":
            return convs.GCNLayer(in_dim, out_dim)
        if self.cfg.model == "gat":
            return convs.GATLayer(in_dim, out_dim if last else out_dim // self.cfg.heads, self.cfg.heads)
        return SAGELayer(in_dim, out_dim)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GNN:
        defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
        return cls(**{name: config.get(name, default) for name, default in defaults.items()})

    def config(self) -> dict[str, Any]:
        """Plain dict of the ModelConfig, stored in checkpoints."""
        return dataclasses.asdict(self.cfg)

    @property
    def num_layers(self) -> int:
        return self.cfg.num_layers

    def forward(self, layers: list[LayerGraph], x: torch.Tensor) -> torch.Tensor:
        if len(layers) != self.num_layers:
            raise ValueError(f"the model has {self.num_layers} layers but got {len(layers)} sampled blocks")
        h = x
        for i, layer in enumerate(layers):
            h = self.forward_layer(i, layer, h)
        return h

    def forward_layer(self, i: int, layer: LayerGraph, h: torch.Tensor) -> torch.Tensor:
        """Layer i alone, for layer-wise full-neighbour inference; activation on all but the last."""
        if i == 0 and self.cfg.feature_norm == "row":
            # Normalised here, not in the data: training, evaluation and inference all see it.
            h = h / h.abs().sum(dim=1, keepdim=True).clamp_min(1e-12)
        h = self.layers[i](layer, h)
        last = i == self.num_layers - 1
        if self.cfg.model == "gat":
            h = h.mean(dim=1) if last else h.flatten(1)
        if not last:
            h = self.activation(h)
        return h


GraphSAGE = GNN
"""The default stack (model='sage'), by its old name."""


def build_model(cfg: ModelConfig) -> nn.Module:
    """A built-in stack, or what a custom factory returns for cfg (`distgnn.trainer.custom`)."""
    if cfg.builtin:
        return GNN.from_config(dataclasses.asdict(cfg))
    from distgnn.trainer import custom

    return custom.build(cfg)
