"""One optimisation step, evaluation, precision, schedules and DDP helpers.

Plain PyTorch, no dgl import: the same code runs on CPU with gloo (CI) and on
CUDA with nccl, in fp32, bf16 or fp16 (with a GradScaler).
"""

from __future__ import annotations

import contextlib
import enum
import math
import time
from dataclasses import dataclass
from typing import ContextManager

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from distgnn.errors import InputError
from distgnn.trainer.model import LayerGraph


class Precision(str, enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"

    @classmethod
    def parse(cls, value: str, device: torch.device | str) -> Precision:
        """The --precision flag's value, checked against the device it will run on."""
        try:
            precision = cls(value)
        except ValueError:
            choices = ", ".join(p.value for p in cls)
            raise InputError(f"--precision: unknown value {value!r} (choose one of {choices})") from None
        device = torch.device(device)
        if precision is cls.FP16 and device.type != "cuda":
            # CPU autocast has no loss scaling, and fp16 without it underflows
            # small gradients to zero.
            raise InputError(f"--precision fp16 needs a CUDA device (this run is on {device.type}); use bf16 or fp32")
        return precision

    @property
    def dtype(self) -> torch.dtype:
        return {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}[self]


def autocast_context(precision: Precision, device: torch.device | str) -> ContextManager[object]:
    if precision is Precision.FP32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=precision.dtype)


def make_grad_scaler(precision: Precision, device: torch.device | str) -> torch.cuda.amp.GradScaler:
    """A live GradScaler for fp16, a disabled one otherwise, so its state can always be checkpointed."""
    device = torch.device(device)
    enabled = precision is Precision.FP16
    if enabled and device.type != "cuda":
        raise InputError(f"--precision fp16 needs a CUDA device (this run is on {device.type}); use bf16 or fp32")
    # torch.amp.GradScaler appeared in torch 2.3 and torch.cuda.amp.GradScaler is
    # deprecated after it; the GPU machines run a newer torch than the 2.2 pin.
    amp_scaler = getattr(torch.amp, "GradScaler", None)
    if amp_scaler is not None:
        return amp_scaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


@dataclass(frozen=True, kw_only=True)
class StepTimings:
    forward_s: float
    """Forward pass and loss."""
    backward_s: float
    """Backward pass, including DDP's gradient all-reduce, which overlaps it."""
    optimizer_s: float
    """Unscale, clipping, optimizer step and scaler update."""

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_s + self.optimizer_s


@dataclass(frozen=True, kw_only=True)
class StepResult:
    loss: float
    grad_norm: float
    """Total gradient norm before clipping (inf/nan when fp16 overflowed and the step was skipped)."""
    loss_scale: float
    """The GradScaler's scale used for this step (1.0 when it is disabled)."""
    timings: StepTimings


class _Laps:
    """Wall-clock time between marks, synchronising CUDA at each mark.

    CUDA kernels are asynchronous: without the synchronize a phase's kernels
    would be charged to whichever later phase first waits for them.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._sync()
        self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def lap(self, name: str) -> None:
        self._sync()
        now = time.perf_counter()
        self.laps[name] = now - self.last
        self.last = now


def move_batch(
    layers: list[LayerGraph], x: torch.Tensor, y: torch.Tensor, device: torch.device | str
) -> tuple[list[LayerGraph], torch.Tensor, torch.Tensor]:
    non_blocking = torch.device(device).type == "cuda"
    return (
        [layer.to(device, non_blocking=non_blocking) for layer in layers],
        x.to(device, non_blocking=non_blocking),
        y.to(device, non_blocking=non_blocking),
    )


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.cuda.amp.GradScaler,
    layers: list[LayerGraph],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    precision: Precision,
    clip_norm: float | None,
    extra: tuple = (),
    loss_fn=None,
) -> StepResult:
    """Forward under autocast, an fp32 loss (cross-entropy unless loss_fn is given), scaled
    backward, clipping, step. `extra` goes to the model after (layers, x)."""
    model.train()
    laps = _Laps(x.device)
    with autocast_context(precision, x.device):
        out = model(layers, x, *extra)
    # Softmax over low-precision logits loses accuracy; the loss is cheap in fp32.
    loss = F.cross_entropy(out.float(), y) if loss_fn is None else loss_fn(out, y)
    laps.lap("forward")
    scaler.scale(loss).backward()
    laps.lap("backward")
    loss_scale = float(scaler.get_scale())
    grad_norm = _clip_and_step(optimizer, scaler, clip_norm)
    laps.lap("optimizer")
    return StepResult(
        loss=float(loss.detach()),
        grad_norm=grad_norm,
        loss_scale=loss_scale,
        timings=StepTimings(
            forward_s=laps.laps["forward"], backward_s=laps.laps["backward"], optimizer_s=laps.laps["optimizer"]
        ),
    )


def _clip_and_step(optimizer: torch.optim.Optimizer, scaler: torch.cuda.amp.GradScaler, clip_norm: float | None) -> float:
    """Unscale, clip, step (skipped by the scaler on fp16 overflow), clear; the norm before clipping."""
    # Clipping must see the true gradients, so unscale them first.
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    max_norm = clip_norm if clip_norm is not None and clip_norm > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


@torch.no_grad()
def eval_forward(model: nn.Module, layers: list[LayerGraph], x: torch.Tensor, precision: Precision) -> torch.Tensor:
    """The model's output for one batch in eval mode, under autocast; training mode is restored."""
    # The bare module: evaluating through DDP would take part in its collectives.
    module = model.module if isinstance(model, DistributedDataParallel) else model
    was_training = module.training
    module.eval()
    try:
        with autocast_context(precision, x.device):
            return module(layers, x)
    finally:
        module.train(was_training)


@torch.no_grad()
def evaluate_batch(
    model: nn.Module, layers: list[LayerGraph], x: torch.Tensor, y: torch.Tensor, precision: Precision
) -> tuple[int, int]:
    """(correct, total) predictions of one batch, in eval mode."""
    logits = eval_forward(model, layers, x, precision)
    correct = int((logits.argmax(dim=1) == y).sum())
    return correct, int(y.numel())


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr over warmup_steps, then cosine decay to min_lr_ratio * lr at total_steps.

    Step s (0-based) of warm-up uses (s + 1) / warmup_steps, so the first step already moves.
    """
    if warmup_steps < 0 or total_steps < 1 or warmup_steps > total_steps:
        raise ValueError(f"warmup_cosine needs 0 <= warmup_steps <= total_steps, total_steps >= 1; got {warmup_steps}, {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"warmup_cosine needs min_lr_ratio in [0, 1], got {min_lr_ratio}")
    decay_steps = max(1, total_steps - warmup_steps)

    # A closure, not a callable object: LambdaLR would checkpoint an object's
    # fields and a resumed run would then keep the old run's schedule.
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


OPTIMIZERS = ("adamw", "adam")


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, kind: str = "adamw") -> torch.optim.Optimizer:
    """AdamW (decoupled decay) or Adam (decay as an L2 term in the gradient), decaying weight
    matrices only: decaying biases only pulls them to zero.

    Adam's coupled L2 regularises much harder on small, sparse-feature datasets (the Planetoid
    citation graphs), so both are offered.
    """
    if kind not in OPTIMIZERS:
        raise InputError(f"--optimizer {kind!r}: expected one of {', '.join(OPTIMIZERS)}")
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return optimizer([g for g in groups if g["params"]], lr=lr)


def wrap_ddp(model: nn.Module, device: torch.device | str) -> DistributedDataParallel:
    """DDP around a model already on `device`; needs an initialised process group."""
    device = torch.device(device)
    if not dist.is_initialized():
        raise RuntimeError("wrap_ddp needs torch.distributed.init_process_group first")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(model, device_ids=[index], output_device=index)
    return DistributedDataParallel(model)


def _collective_device() -> torch.device:
    # nccl only moves CUDA tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree_num_steps(n_local: int) -> int:
    """The smallest local batch count over all ranks.

    DDP's backward is a collective: a rank that runs one step more than the
    others waits forever for partners in its all-reduce. Every rank runs this
    many steps and drops its surplus batches.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return int(n_local)
    count = torch.tensor([int(n_local)], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(count, op=dist.ReduceOp.MIN)
    return int(count.item())
