"""train_step, precision, schedule, clipping and DDP over real gloo (and nccl where a GPU exists)."""

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clusterutil import free_port
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distgnn.errors import InputError
from distgnn.trainer.model import GraphSAGE, LayerGraph
from distgnn.trainer.step import (
    Precision,
    agree_num_steps,
    autocast_context,
    evaluate_batch,
    make_grad_scaler,
    make_optimizer,
    train_step,
    warmup_cosine,
    wrap_ddp,
)

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_batch(seed, *, sizes=(120, 40, 16), degree=4, feat_dim=8, num_classes=3):
    """Random 2-layer blocks; labels are a fixed linear function of the seeds' own features."""
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for num_src, num_dst in zip(sizes[:-1], sizes[1:]):
        dst = torch.arange(num_dst).repeat_interleave(degree)
        src = torch.randint(0, num_src, (num_dst * degree,), generator=gen)
        layers.append(LayerGraph(src, dst, num_src, num_dst))
    x = torch.randn(sizes[0], feat_dim, generator=gen)
    w = torch.randn(feat_dim, num_classes, generator=torch.Generator().manual_seed(1234))
    y = (x[: sizes[-1]] @ w).argmax(dim=1)
    return layers, x, y


def new_model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return GraphSAGE(8, 32, 3, 2, dropout=dropout)


def test_precision_parse_accepts_known_values():
    assert Precision.parse("fp32", CPU) is Precision.FP32
    assert Precision.parse("bf16", "cpu") is Precision.BF16
    assert Precision.parse("fp16", "cuda") is Precision.FP16


def test_precision_unknown_value_is_input_error_naming_the_flag():
    with pytest.raises(InputError, match=r"--precision.*'fp8'.*fp32, bf16, fp16"):
        Precision.parse("fp8", CPU)


def test_precision_fp16_on_cpu_is_input_error():
    with pytest.raises(InputError, match="--precision fp16 needs a CUDA device"):
        Precision.parse("fp16", CPU)
    with pytest.raises(InputError, match="--precision"):
        make_grad_scaler(Precision.FP16, CPU)


def test_disabled_scaler_has_a_checkpointable_state():
    scaler = make_grad_scaler(Precision.BF16, CPU)
    assert not scaler.is_enabled()
    scaler.load_state_dict(scaler.state_dict())
    assert scaler.get_scale() == 1.0


def test_bf16_autocast_on_cpu_trains_with_loss_close_to_fp32():
    layers, x, y = make_batch(0)
    results = {}
    for precision in (Precision.FP32, Precision.BF16):
        model = new_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = make_grad_scaler(precision, CPU)
        results[precision] = train_step(model, opt, scaler, layers, x, y, precision=precision, clip_norm=None)
        results[precision, "params"] = [p.detach().clone() for p in model.parameters()]
        assert all(p.dtype == torch.float32 for p in model.parameters())
    fp32, bf16 = results[Precision.FP32], results[Precision.BF16]
    assert bf16.loss == pytest.approx(fp32.loss, rel=2e-2)
    assert bf16.grad_norm == pytest.approx(fp32.grad_norm, rel=5e-2)
    assert bf16.loss != fp32.loss  # bf16 really ran in lower precision
    assert bf16.loss_scale == 1.0
    for a, b in zip(results[Precision.FP32, "params"], results[Precision.BF16, "params"]):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=5e-2)
    with autocast_context(Precision.BF16, CPU):
        logits = new_model()(layers, x)
    assert logits.dtype == torch.bfloat16


def test_training_loop_fits_separable_data():
    batches = [make_batch(s) for s in range(4)]
    model = new_model(dropout=0.1)
    opt = make_optimizer(model, lr=0.02, weight_decay=1e-4)
    sched = warmup_cosine(opt, warmup_steps=10, total_steps=200, min_lr_ratio=0.1)
    scaler = make_grad_scaler(Precision.FP32, CPU)
    losses = []
    for step in range(200):
        layers, x, y = batches[step % len(batches)]
        r = train_step(model, opt, scaler, layers, x, y, precision=Precision.FP32, clip_norm=5.0)
        sched.step()
        losses.append(r.loss)
        assert r.timings.forward_s > 0 and r.timings.backward_s > 0 and r.timings.optimizer_s > 0
    assert sum(losses[-8:]) / 8 < 0.25 * sum(losses[:8]) / 8
    correct = total = 0
    for layers, x, y in batches:
        c, t = evaluate_batch(model, layers, x, y, Precision.BF16)
        correct, total = correct + c, total + t
    assert total == 64
    assert correct / total >= 0.9
    assert model.training  # evaluate_batch restores the mode it found


def test_warmup_cosine_lr_at_specific_steps():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=12, min_lr_ratio=0.1)
    lrs = []
    for _ in range(15):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = {0: 0.5, 1: 1.0, 3: 2.0, 4: 2.0, 8: 2.0 * (0.1 + 0.9 * 0.5), 12: 0.2, 14: 0.2}
    for step, lr in expected.items():
        assert lrs[step] == pytest.approx(lr), step
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # never rises after warm-up


def test_warmup_cosine_rejects_impossible_schedules():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(opt, warmup_steps=10, total_steps=5, min_lr_ratio=0.0)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        warmup_cosine(opt, warmup_steps=0, total_steps=5, min_lr_ratio=1.5)


def test_clip_norm_bounds_the_update():
    layers, x, y = make_batch(1)
    deltas = {}
    for clip in (None, 1e-3):
        model = new_model()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        r = train_step(model, opt, make_grad_scaler(Precision.FP32, CPU), layers, x, y,
                       precision=Precision.FP32, clip_norm=clip)
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        deltas[clip] = (float((after - before).norm()), r.grad_norm)
    unclipped_step, grad_norm = deltas[None]
    clipped_step, reported = deltas[1e-3]
    assert reported == pytest.approx(grad_norm)  # the norm before clipping is reported
    assert unclipped_step == pytest.approx(grad_norm, rel=1e-4)
    assert grad_norm > 0.1
    assert clipped_step == pytest.approx(1e-3, rel=1e-3)
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True)


def test_make_optimizer_decays_weights_only():
    model = new_model()
    opt = make_optimizer(model, lr=0.01, weight_decay=0.05)
    assert isinstance(opt, torch.optim.AdamW)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters() if p.dim() == 2}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_agree_num_steps_without_process_group_is_local_count():
    assert not dist.is_initialized()
    assert agree_num_steps(7) == 7


# ---- DDP with real process groups -------------------------------------------------------------

def _ddp_worker(rank, world, port, backend, out_dir, batch_counts, precision_name):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        device = torch.device("cuda", rank) if backend == "nccl" else CPU
        if device.type == "cuda":
            torch.cuda.set_device(device)
        precision = Precision.parse(precision_name, device)
        # Different initial weights per rank: DDP must broadcast rank 0's.
        model = wrap_ddp(new_model(seed=rank, dropout=0.2).to(device), device)
        opt = make_optimizer(model, lr=0.01, weight_decay=1e-4)
        scaler = make_grad_scaler(precision, device)
        batches = [make_batch(100 * rank + i) for i in range(batch_counts[rank])]
        steps = agree_num_steps(len(batches))
        losses = []
        for layers, x, y in batches[:steps]:
            layers = [layer.to(device) for layer in layers]
            r = train_step(model, opt, scaler, layers, x.to(device), y.to(device), precision=precision, clip_norm=1.0)
            losses.append(r.loss)
        params = [p.detach().cpu() for p in model.module.parameters()]
        torch.save({"steps": steps, "params": params, "losses": losses}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ddp(tmp_path, *, world, backend, batch_counts, precision="fp32", timeout_s=120.0):
    ctx = mp.spawn(_ddp_worker, args=(world, free_port(), backend, str(tmp_path), batch_counts, precision),
                   nprocs=world, join=False)
    deadline = time.monotonic() + timeout_s
    # join() re-raises a worker's exception with its traceback.
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            for proc in ctx.processes:
                proc.join(timeout=10)
            pytest.fail(f"DDP workers did not finish within {timeout_s} s (deadlock?)")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


def test_ddp_gloo_uneven_batches_agree_on_steps_and_keep_parameters_identical(tmp_path):
    # Rank 1 has fewer batches: without agree_num_steps rank 0 would block in its 5th all-reduce.
    out = run_ddp(tmp_path, world=2, backend="gloo", batch_counts=[5, 3])
    assert [o["steps"] for o in out] == [3, 3]
    assert out[0]["losses"] != out[1]["losses"]  # the ranks really saw different data
    for a, b in zip(out[0]["params"], out[1]["params"]):
        assert torch.equal(a, b)
    untrained = list(new_model(seed=0).parameters())
    assert not all(torch.equal(a, p.detach()) for a, p in zip(out[0]["params"], untrained))


@needs_gpu
def test_fp16_with_grad_scaler_on_cuda_trains():
    device = torch.device("cuda")
    batches = [make_batch(s) for s in range(4)]
    model = new_model().to(device)
    opt = make_optimizer(model, lr=0.02, weight_decay=0.0)
    scaler = make_grad_scaler(Precision.FP16, device)
    assert scaler.is_enabled()
    losses = []
    for step in range(120):
        layers, x, y = batches[step % 4]
        layers = [layer.to(device) for layer in layers]
        r = train_step(model, opt, scaler, layers, x.to(device), y.to(device), precision=Precision.FP16, clip_norm=5.0)
        losses.append(r.loss)
    assert r.loss_scale > 1.0
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4])
    assert all(p.dtype == torch.float32 for p in model.parameters())


@needs_gpu
def test_ddp_nccl_keeps_parameters_identical(tmp_path):
    # nccl needs one GPU per rank; with a single GPU this still exercises device_ids and CUDA collectives.
    world = min(2, torch.cuda.device_count())
    out = run_ddp(tmp_path, world=world, backend="nccl", batch_counts=[4, 3][:world], precision="bf16")
    assert {o["steps"] for o in out} == {3 if world == 2 else 4}
    for o in out[1:]:
        for a, b in zip(out[0]["params"], o["params"]):
            assert torch.equal(a, b)


def test_gpu_bench_runs_without_dgl(tmp_path):
    saved = tmp_path / "batches.pt"
    code = (
        "import runpy, sys\nsys.argv = sys.argv[1:]\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert not [m for m in sys.modules if m == 'dgl' or m.startswith('dgl.')]\n"
    )
    argv = [sys.executable, "-c", code, str(REPO / "bench" / "gpu_step.py"), "--make-fake", "--save", str(saved),
            "--num-batches", "2", "--batch-size", "32", "--fanouts", "3,4", "--feat-dim", "8",
            "--num-nodes", "2000", "--hidden", "16", "--steps", "2", "--warmup", "1", "--precisions", "fp32,bf16,fp16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "fp32" in proc.stdout and "bf16" in proc.stdout and "seeds/s" in proc.stdout
    if not torch.cuda.is_available():
        assert "fp16      skipped: --precision fp16 needs a CUDA device" in proc.stdout
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_step
    finally:
        sys.path.remove(str(REPO / "bench"))
    batches = gpu_step.load_batches(saved)
    assert len(batches) == 2
    layers, x, y = batches[0]
    assert layers[-1].num_dst == y.numel() == 32 and layers[0].num_src == x.shape[0]
    assert all(a.num_src == b.num_dst for a, b in zip(layers[1:], layers[:-1]))
    assert int(layers[0].src.max()) < layers[0].num_src and int(layers[0].dst.max()) < layers[0].num_dst
    with pytest.raises(InputError, match="--batches"):
        (tmp_path / "junk.pt").write_bytes(b"not a torch file")
        gpu_step.load_batches(tmp_path / "junk.pt")
