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


def test_a_workers_one_line_error_leads_the_report_even_above_a_peers_traceback():
    """In a one-host torchrun group, the worker that failed prints its one-line error and its
    peer's lost-connection traceback follows in the same log, past the report's tail."""
    from pathlib import Path

    from distgnn.launcher.plan import ProcessSpec
    from distgnn.launcher.supervise import RunResult, failure_of, first_error_line, format_report

    group = ["[rank 0] epoch 0 step 4", "train: error: sampler process 1 of 1 (pid 7) was killed by SIGKILL",
             "Traceback (most recent call last):", "RuntimeError: [gloo/transport/tcp/pair.cc:534] Connection closed by peer",
             "train: error: a later line"]
    assert first_error_line(group) == group[1]
    assert first_error_line(["distgnn-server: error: x"]) == "distgnn-server: error: x"
    assert first_error_line(["RuntimeError: error: x", " train: error: indented"]) is None
    spec = ProcessSpec(host="h", host_index=0, role="trainer", rank=0, argv=[], env={}, log_path=Path("x.log"),
                       local=True, ports=[])
    cause = failure_of(spec, 1, group, ended_at=0.0)
    assert cause.error == group[1]
    assert not cause.lost_peer, "it explained its own failure; the peer's lost connection came after"
    assert failure_of(spec, 1, group[2:4], ended_at=0.0).lost_peer
    report = format_report(RunResult(status="failed", failures=[cause]), "/run").splitlines()
    assert report[0].startswith("root cause: host h trainer rank 0: exit code 1")
    assert report[1] == "  " + group[1]
