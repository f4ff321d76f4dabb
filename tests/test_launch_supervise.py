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


def _beating(tmp_path, role: str, rank: int, *, ticks_for: float, label: str):
    """A real local process that heartbeats (as a launched server or trainer does) and counts
    batches for `ticks_for` seconds, then only heartbeats."""
    import sys

    from distgnn.launcher.plan import ProcessSpec

    code = ("import time; from distgnn import heartbeat; heartbeat.start(%r, %d); t = time.monotonic()\n"
            "while True:\n"
            "    if time.monotonic() - t < %r: heartbeat.tick()\n"
            "    time.sleep(0.05)\n") % (role, rank, ticks_for)
    return ProcessSpec(host="127.0.0.1", host_index=0, role=role, rank=0 if role == "trainer" else rank,
                       argv=[sys.executable, "-c", code], env={"DISTGNN_HEARTBEAT_S": "0.2"},
                       log_path=tmp_path / f"{label}.log", local=True, ports=[])


def _supervise(specs, hang_timeout_s: float, during=None):
    import io
    import threading

    from distgnn.launcher.runner import LocalRunner
    from distgnn.launcher.supervise import Supervisor

    sup = Supervisor(io.StringIO(), stop_grace_s=1.0, server_linger_s=0.0, hang_timeout_s=hang_timeout_s,
                     settle_s=0.5)
    started = [LocalRunner(host="127.0.0.1").start(spec) for spec in specs]
    for proc in started:
        sup.add(proc)
    if during is not None:
        threading.Timer(1.0, during, args=(started,)).start()
    return sup.run(), started


def test_a_stopped_process_is_found_by_its_silence_and_named(tmp_path):
    import os
    import signal
    import time

    from distgnn.launcher.supervise import format_report

    stopped_at = {}

    def stop_trainer(started):
        stopped_at["t"] = time.monotonic()
        os.kill(started[1].popen.pid, signal.SIGSTOP)

    specs = [_beating(tmp_path, "server", 0, ticks_for=0, label="server"),
             _beating(tmp_path, "trainer", 3, ticks_for=1e9, label="trainer")]
    result, started = _supervise(specs, hang_timeout_s=2.0, during=stop_trainer)
    took = time.monotonic() - stopped_at["t"]
    assert result.status == "failed"
    cause = result.root_cause
    assert cause.role == "trainer" and cause.hang.startswith("global rank 3: no heartbeat for ")
    assert "stopped making progress" in format_report(result, "/run").splitlines()[0]
    assert took < 2.0 + 1.0 + 3.0, f"judged and stopped {took:.1f} s after SIGSTOP"
    assert all(p.popen.poll() is not None for p in started)  # the stopped one was killed too


def test_a_trainer_whose_batches_stop_is_hung_though_it_still_beats(tmp_path):
    specs = [_beating(tmp_path, "server", 0, ticks_for=0, label="server"),
             _beating(tmp_path, "trainer", 1, ticks_for=0.5, label="trainer")]
    result, _started = _supervise(specs, hang_timeout_s=2.0)
    assert result.status == "failed"
    assert result.root_cause.role == "trainer"
    assert result.root_cause.hang.startswith("global rank 1: no training or evaluation batch for ")


def test_heartbeat_lines_are_found_even_inside_other_output():
    from distgnn.heartbeat import Heartbeat, format_heartbeat, split_heartbeat

    line = format_heartbeat("trainer", 2, 40, pid=77)
    assert split_heartbeat(line) == (Heartbeat("trainer", 2, 77, 40), "")
    assert split_heartbeat("epoch 3 lo" + line) == (Heartbeat("trainer", 2, 77, 40), "epoch 3 lo")
    assert split_heartbeat("plain") == (None, "plain")


def test_the_worker_whose_error_leads_the_log_is_blamed_whatever_torchruns_order():
    """Both workers of a one-host group exit 1 when one fails on its own (a full disk) and
    the other loses it; torchrun lists them in either order."""
    from pathlib import Path

    from distgnn.launcher.plan import ProcessSpec
    from distgnn.launcher.supervise import failure_of

    def report(first: int, second: int) -> list[str]:
        return ["Failures:", "[1]:", f"  rank      : {first} (local_rank: {first})", "  exitcode  : 1 (pid: 8)",
                "Root Cause (first observed failure):", "[0]:", f"  rank      : {second} (local_rank: {second})",
                "  exitcode  : 1 (pid: 9)"]

    error = "train: error: cannot write checkpoint of epoch 0 to /ck: No space left on device (global rank 0)"
    peer = "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer"
    spec = ProcessSpec(host="h", host_index=0, role="trainer", rank=0, argv=[], env={}, log_path=Path("x.log"),
                       local=True, ports=[])
    for order in ((1, 0), (0, 1)):
        cause = failure_of(spec, 1, [error, peer, *report(*order)], ended_at=0.0)
        assert cause.worker == "trainer global rank 0 exit code 1" and not cause.lost_peer
