"""Checkpoints: atomic writes, the latest pointer, exact resume, and refusing the wrong model."""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from distgnn.errors import InputError
from distgnn.trainer.checkpoint import (
    apply_state,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    make_state,
    restore_rng_state,
    save_checkpoint,
)
from distgnn.trainer.model import GraphSAGE, LayerGraph
from distgnn.trainer.step import Precision, make_grad_scaler, make_optimizer, train_step, warmup_cosine

CPU = torch.device("cpu")
TRAIN_CONFIG = {"lr": 0.01, "batch_size": 16, "fanouts": [4, 4], "precision": "fp32"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_batch(seed):
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for num_src, num_dst in ((60, 24), (24, 8)):
        dst = torch.arange(num_dst).repeat_interleave(3)
        layers.append(LayerGraph(torch.randint(0, num_src, (num_dst * 3,), generator=gen), dst, num_src, num_dst))
    return layers, torch.randn(60, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)


def new_run(seed):
    torch.manual_seed(seed)
    model = GraphSAGE(6, 16, 3, 2, dropout=0.5)  # dropout: the torch RNG matters for exact resume
    opt = make_optimizer(model, lr=0.01, weight_decay=1e-3)
    return {
        "model": model,
        "optimizer": opt,
        "scheduler": warmup_cosine(opt, warmup_steps=2, total_steps=10, min_lr_ratio=0.1),
        "scaler": make_grad_scaler(Precision.FP32, CPU),
    }


def run_steps(run, batches):
    for layers, x, y in batches:
        train_step(run["model"], run["optimizer"], run["scaler"], layers, x, y, precision=Precision.FP32, clip_norm=1.0)
        run["scheduler"].step()


def state_of(run, best=0.5, patience=1):
    return make_state(**run, model_config=run["model"].config(), train_config=TRAIN_CONFIG,
                      progress={"best_val": best, "evals_without_improvement": patience})


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    batches = [make_batch(s) for s in range(6)]
    straight = new_run(seed=0)
    run_steps(straight, batches)

    first = new_run(seed=0)
    run_steps(first, batches[:3])
    save_checkpoint(tmp_path, 3, state_of(first, best=0.75, patience=2))
    # Disturb everything a resumed process would start with.
    torch.manual_seed(999), random.seed(999), np.random.seed(999)
    resumed = new_run(seed=123)
    state = load_checkpoint(latest_checkpoint(tmp_path), model_config=resumed["model"].config())
    progress = apply_state(state, **resumed)
    assert state["epoch"] == 3 and progress == {"best_val": 0.75, "evals_without_improvement": 2}
    assert state["train_config"] == TRAIN_CONFIG
    assert resumed["optimizer"].param_groups[0]["lr"] == first["optimizer"].param_groups[0]["lr"]
    run_steps(resumed, batches[3:])

    for a, b in zip(straight["model"].parameters(), resumed["model"].parameters()):
        assert torch.equal(a, b)
    assert straight["scheduler"].state_dict() == resumed["scheduler"].state_dict()
    assert straight["optimizer"].param_groups[0]["lr"] == resumed["optimizer"].param_groups[0]["lr"]


def test_rng_state_round_trips_through_a_checkpoint_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in NumPy's legacy state
    save_checkpoint(tmp_path, 1, {"rng": capture_rng_state(), "model_config": {}})
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(load_checkpoint(latest_checkpoint(tmp_path), model_config={})["rng"])
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3]
    assert torch.equal(got[3], expected[3])


def test_no_checkpoint_means_latest_is_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "never-created") is None
    (tmp_path / "notes.txt").write_text("x")
    assert latest_checkpoint(tmp_path) is None


def test_latest_pointer_names_the_newest_and_old_ones_are_pruned(tmp_path):
    run = new_run(seed=0)
    for epoch in range(1, 6):
        path = save_checkpoint(tmp_path, epoch, state_of(run), keep=2)
        assert path.name == f"epoch-{epoch:05d}.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch-00004.pt", "epoch-00004.pt.sha256", "epoch-00005.pt", "epoch-00005.pt.sha256", "latest"]
    assert (tmp_path / "latest").read_text().strip() == "epoch-00005.pt"
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-00005.pt"
    (tmp_path / "latest").unlink()  # a lost pointer falls back to the highest epoch
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-00005.pt"


CRASH_SCRIPT = """
import os, sys
from distgnn.trainer import checkpoint
def die_before_rename(src, dst):
    os._exit(17)  # the process dies after writing and fsyncing the temp file
os.replace = die_before_rename
checkpoint.save_checkpoint(sys.argv[1], 2, {"model_config": {}, "payload": list(range(1000))})
"""


def test_crash_between_temp_write_and_rename_keeps_previous_latest(tmp_path):
    save_checkpoint(tmp_path, 1, {"model_config": {}, "payload": [1]})
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 17, proc.stderr
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".epoch-00002.pt.") and p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-00001.pt"
    assert load_checkpoint(latest_checkpoint(tmp_path), model_config={})["payload"] == [1]
    # The next successful save clears the dead writer's temp file.
    save_checkpoint(tmp_path, 2, {"model_config": {}, "payload": [2]})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch-00001.pt", "epoch-00001.pt.sha256", "epoch-00002.pt", "epoch-00002.pt.sha256", "latest"]
    assert load_checkpoint(latest_checkpoint(tmp_path), model_config={})["payload"] == [2]


def test_failed_write_leaves_no_temp_file_and_old_latest(tmp_path):
    save_checkpoint(tmp_path, 1, {"model_config": {}})
    with pytest.raises(AttributeError, match="pickle"):
        save_checkpoint(tmp_path, 2, {"model_config": {}, "bad": lambda: None})  # not picklable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-00001.pt", "epoch-00001.pt.sha256", "latest"]
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-00001.pt"


def test_mismatched_model_config_is_input_error_naming_keys_and_flag(tmp_path):
    run = new_run(seed=0)
    path = save_checkpoint(tmp_path, 1, state_of(run))
    other = dict(run["model"].config(), hidden=32, num_layers=3)
    with pytest.raises(InputError, match=r"--resume: .*hidden \(checkpoint 16, this run 32\), num_layers") as info:
        load_checkpoint(path, model_config=other)
    assert "\n" not in str(info.value)
    assert "dropout" not in str(info.value)
    with pytest.raises(InputError, match=r"^--predict-only: .*hidden"):
        load_checkpoint(path, model_config=other, flag="--predict-only")


def test_unreadable_checkpoint_is_input_error(tmp_path):
    garbage = tmp_path / "epoch-00001.pt"
    garbage.write_bytes(b"\x80\x04 this is not a checkpoint")
    with pytest.raises(InputError, match="--resume: cannot read checkpoint .*epoch-00001.pt"):
        load_checkpoint(garbage, model_config={})


def test_missing_checkpoint_is_input_error(tmp_path):
    with pytest.raises(InputError, match="--resume: checkpoint .* does not exist"):
        load_checkpoint(tmp_path / "epoch-00007.pt", model_config={})


def test_foreign_torch_file_is_input_error(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(InputError, match="not a distgnn checkpoint"):
        load_checkpoint(path, model_config={})


def test_checkpoint_of_a_ddp_free_state_loads_into_a_fresh_model(tmp_path):
    run = new_run(seed=0)
    path = save_checkpoint(tmp_path, 4, state_of(run))
    state = load_checkpoint(path, model_config=run["model"].config())
    fresh = GraphSAGE.from_config(state["model_config"])
    fresh.load_state_dict(state["model"])
    for a, b in zip(run["model"].parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert not any(k.startswith("module.") for k in state["model"])
    assert os.path.basename(path) == "epoch-00004.pt"


def _flip_byte(path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage_it", ["flip", "truncate", "no-digest"])
def test_a_damaged_latest_falls_back_to_the_newest_intact(tmp_path, damage_it):
    from distgnn.trainer.checkpoint import intact_checkpoint

    for epoch in (1, 2, 3):
        save_checkpoint(tmp_path, epoch, {"model_config": {}, "payload": list(range(100 * epoch))})
    latest = tmp_path / "epoch-00003.pt"
    assert intact_checkpoint(tmp_path) == (latest, [])
    if damage_it == "flip":
        _flip_byte(latest, latest.stat().st_size // 2)
    elif damage_it == "truncate":
        latest.write_bytes(latest.read_bytes()[:-100])
    else:
        (tmp_path / "epoch-00003.pt.sha256").unlink()
    path, notes = intact_checkpoint(tmp_path)
    assert path == tmp_path / "epoch-00002.pt"
    assert len(notes) == 1 and notes[0].startswith("epoch-00003.pt: ")
    assert load_checkpoint(path, model_config={})["payload"] == list(range(200))


def test_no_intact_checkpoint_lists_what_is_damaged(tmp_path):
    from distgnn.trainer.checkpoint import intact_checkpoint

    save_checkpoint(tmp_path, 1, {"model_config": {}})
    _flip_byte(tmp_path / "epoch-00001.pt", 40)
    path, notes = intact_checkpoint(tmp_path)
    assert path is None and notes == ["epoch-00001.pt: its sha256 does not match (damaged or truncated)"]
