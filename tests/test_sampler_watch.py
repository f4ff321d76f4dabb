"""The sampler-pool watch: batches are handed out as DGL's pool does, and a dead sampler
process ends the wait within the poll interval instead of DGL's 30 minutes.

The pool here has DGL's CustomPool fields (result queue, per-loader result lists, process
list) over real multiprocessing queues and processes; the cluster test in test_cluster.py
kills a real DGL sampler process under a real launch."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from types import SimpleNamespace

import pytest

from distgnn.errors import ProcessLost
from distgnn.trainer.sampler_watch import describe_exit, get_result_watched

CTX = mp.get_context("fork")


def _sleep_forever() -> None:
    time.sleep(600)


def _exit_with(code: int) -> None:
    os._exit(code)


@pytest.fixture
def pool():
    procs: list = []
    pool = SimpleNamespace(result_queue=CTX.Queue(), results={"a": [], "b": []}, process_list=procs)
    yield pool
    for proc in procs:
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=10)


def start(pool, target, *args) -> mp.Process:
    proc = CTX.Process(target=target, args=args, daemon=True)
    proc.start()
    pool.process_list.append(proc)
    return proc


def test_batches_go_to_their_loader_in_order(pool):
    start(pool, _sleep_forever)
    for item in [("b", 1), ("a", 2), ("a", 3)]:
        pool.result_queue.put(item)
    assert get_result_watched(pool, 0.05, "a") == 2
    assert pool.results["b"] == [1], "another loader's batch is kept for it"
    assert get_result_watched(pool, 0.05, "b") == 1
    assert get_result_watched(pool, 0.05, "a") == 3


@pytest.mark.parametrize(
    "target, args, how",
    [(_exit_with, (3,), "exited with code 3"), (_sleep_forever, (), "was killed by SIGKILL")],
)
def test_a_dead_sampler_ends_the_wait_naming_it(pool, target, args, how):
    start(pool, _sleep_forever)
    victim = start(pool, target, *args)
    if target is _sleep_forever:
        os.kill(victim.pid, signal.SIGKILL)
    begun = time.monotonic()
    with pytest.raises(ProcessLost) as err:
        get_result_watched(pool, 0.1, "a", timeout=60)
    assert time.monotonic() - begun < 5
    message = str(err.value)
    assert f"sampler process 2 of 2 (pid {victim.pid}) {how}" in message and "\n" not in message


def test_a_batch_that_arrived_is_handed_out_even_if_a_sampler_died_since(pool):
    start(pool, _exit_with, 1).join(timeout=10)
    pool.results["a"].append("ready")
    assert get_result_watched(pool, 0.1, "a") == "ready"
    with pytest.raises(ProcessLost):
        get_result_watched(pool, 0.1, "a")


def _queue_a_tensor_then_die(result_queue) -> None:
    import torch
    import torch.multiprocessing  # noqa: F401 - registers tensor pickling by file descriptor

    result_queue.put(("a", torch.ones(1000)))
    result_queue.close()
    result_queue.join_thread()
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_batch_from_a_sampler_that_died_after_queueing_it_names_the_sampler(pool):
    """DGL's batches carry tensors whose memory the receiver asks the sender for; a dead sender
    breaks that handover, which must read as the sampler's death, not as a socket error."""
    import torch.multiprocessing  # noqa: F401

    victim = start(pool, _queue_a_tensor_then_die, pool.result_queue)
    victim.join(timeout=30)
    with pytest.raises(ProcessLost, match=f"pid {victim.pid}\\) was killed by SIGKILL") as err:
        get_result_watched(pool, 0.1, "a", timeout=60)
    assert isinstance(err.value.__cause__, OSError)


def test_live_samplers_that_send_nothing_time_out(pool):
    start(pool, _sleep_forever)
    with pytest.raises(TimeoutError, match="every sampler process is alive"):
        get_result_watched(pool, 0.05, "a", timeout=0.3)


def test_unknown_loader_is_refused(pool):
    with pytest.raises(KeyError, match="unknown loader 'c'"):
        get_result_watched(pool, 0.05, "c")


def test_exit_codes_in_words():
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(-signal.SIGTERM) == "was killed by SIGTERM"
    assert describe_exit(-200) == "was killed by signal 200"


def test_no_pool_without_sampler_processes():
    """A trainer with --samplers 0 samples in its own process: nothing to watch."""
    from distgnn.trainer.sampler_watch import watch_sampler_pool

    assert watch_sampler_pool() is False


def test_a_process_that_asked_to_die_with_its_parent_does(tmp_path):
    """A trainer that is killed must not leave its sampler processes behind (they are outside
    its process group, so the launcher's teardown does not reach them)."""
    import subprocess
    import sys

    import psutil

    child = ("import time; from distgnn.trainer.sampler_watch import die_with_parent; die_with_parent(); "
             "print('ready', flush=True); time.sleep(600)")
    parent = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', sys.argv[1]], stdout=subprocess.PIPE, "
              "stderr=subprocess.DEVNULL, text=True); assert p.stdout.readline() == 'ready\\n'; print(p.pid, flush=True)")
    done = subprocess.run([sys.executable, "-c", parent, child], capture_output=True, text=True, timeout=60, check=True)
    orphan = int(done.stdout.strip())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(orphan) and psutil.Process(orphan).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"process {orphan} outlived its parent"
        time.sleep(0.05)
