"""The supervisor's pure pieces: choosing a run's root cause and the log lines that show it."""

from __future__ import annotations


def test_root_cause_tail_is_the_workers_traceback_not_torchruns_report():
    from distgnn.launcher.supervise import before_torchrun_report

    worker = ["epoch 3", "Traceback (most recent call last):", '  File "loop.py", line 9', "ValueError: boom"]
    torchrun = ["Traceback (most recent call last):", '  File "<frozen runpy>", line 198, in _run_module_as_main',
                '  File "/v/torch/distributed/run.py", line 816, in <module>', "ChildFailedError:", "Root Cause"]
    assert before_torchrun_report(worker + torchrun) == worker
    assert before_torchrun_report(worker) == worker


def test_a_failure_that_only_lost_a_peer_is_not_the_root_cause():
    from distgnn.launcher.supervise import ProcessFailure, RunResult, lost_a_peer

    def failure(host: str, at: float, tail: list[str], worker: str | None) -> ProcessFailure:
        return ProcessFailure(host=host, host_index=0, role="trainer", rank=0, exit_code=1, signal=None, time=at,
                              log_path="x.log", log_tail=tail, worker=worker, lost_peer=lost_a_peer(tail))

    collateral = failure("a", 1.0, ["RuntimeError: [gloo/transport/tcp/pair.cc:534] Connection closed by peer"],
                         "trainer global rank 0 exit code 1")
    killed = failure("b", 2.5, ["epoch 3"], "trainer global rank 3 killed by SIGKILL")
    result = RunResult(status="failed", failures=sorted([collateral, killed], key=lambda f: (f.lost_peer, f.time)))
    assert result.root_cause is killed
    assert "after losing a peer" in collateral.describe() and "after losing" not in killed.describe()


def test_a_torchrun_group_whose_worker_was_killed_is_a_cause_even_if_peers_lost_connections():
    from distgnn.launcher.supervise import killed_by_signal

    group = ["RuntimeError: [gloo/transport/tcp/pair.cc:534] Connection closed by peer",
             "Root Cause (first observed failure):", "[0]:", "  rank      : 3 (local_rank: 1)", "  exitcode  : -9 (pid: 7)"]
    assert killed_by_signal(1, group)
    assert not killed_by_signal(1, group[:1] + ["  rank      : 2 (local_rank: 0)", "  exitcode  : 1 (pid: 7)"])
    assert killed_by_signal(None, ["anything"])
