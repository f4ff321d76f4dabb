"""Node regression: a float target per node (NaN: none), MSE loss, MSE/MAE/R² on evaluation.

The model is any node model with one output. Nodes of a split whose target is NaN are left
out of it. R² is what early stopping and the best checkpoint follow: unlike MSE it is
comparable across targets of any scale, and higher is better, as for the other tasks.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from distgnn.trainer.step import Precision, eval_forward

VAL_METRIC = "r2"


def regression_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.float().squeeze(-1), y.float())


def with_targets(g, nids: torch.Tensor) -> torch.Tensor:
    """The nodes of `nids` that have a target."""
    if len(nids) == 0:
        return nids
    return nids[~torch.isnan(g.ndata["target"][nids])]


@torch.no_grad()
def batch_sums(model, layers, x: torch.Tensor, y: torch.Tensor, precision: Precision) -> torch.Tensor:
    """float64 [n, sum e^2, sum |e|, sum y, sum y^2] of one batch (e = prediction - target), in eval mode."""
    pred = eval_forward(model, layers, x, precision).float().squeeze(-1).double()
    y = y.double()
    err = pred - y
    return torch.stack([torch.tensor(float(y.numel()), dtype=torch.float64, device=y.device),
                        (err * err).sum(), err.abs().sum(), y.sum(), (y * y).sum()]).cpu()


def metrics(sums: torch.Tensor) -> dict[str, float]:
    """MSE, MAE and R² from the summed statistics of every rank."""
    n, sse, sae, sy, syy = (float(v) for v in sums)
    if n == 0:
        return {"mse": math.nan, "mae": math.nan, "r2": math.nan}
    total = syy - sy * sy / n  # sum of squares around the mean
    r2 = 1.0 - sse / total if total > 0 else math.nan
    return {"mse": sse / n, "mae": sae / n, "r2": r2}
