"""One launch, start to end: plan, check every host, stage, start, supervise, record."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from distgnn import configfile
from distgnn.errors import InputError
from distgnn.ip_config import (
    HostEntry,
    check_server_ports,
    format_ip_config,
    is_ipv4,
    is_local,
    local_addresses,
    parse_ip_config,
    resolve_entries,
)
from distgnn.launcher import rundir
from distgnn.launcher.config import TCMALLOC, LaunchConfig
from distgnn.launcher.plan import RunPlan, check_gpus, format_plan, plan_run, plan_to_json
from distgnn.launcher.monitor import NULL_MONITOR, NullMonitor, RunMonitor, start_monitor
from distgnn.launcher.runner import LocalRunner, Runner, SrunRunner, SshRunner
from distgnn.launcher.supervise import RunResult, Supervisor, format_report
from distgnn.partition import shards
from distgnn.ports import DEFAULT_MASTER_PORT, DEFAULT_SERVER_PORT

PROBE_TIMEOUT_S = 90.0
"""A probe may import torch (GPU count) on a busy host."""
STAGE_TIMEOUT_S = 3600.0
COLLECT_TIMEOUT_S = 600.0


def load_hosts(cfg: LaunchConfig, local: set[str], *, resolve: bool = True) -> list[HostEntry]:
    """The ip_config's hosts (or the allocation's nodes) with names resolved (unless `resolve`
    is off, for a dry run); one per machine."""
    source = cfg.hosts_source
    if cfg.slurm_nodes is not None:
        listed = [HostEntry(n.address, DEFAULT_SERVER_PORT, i + 1, n.name, gpus=n.gpus or None)
                  for i, n in enumerate(cfg.slurm_nodes)]
    else:
        listed = parse_ip_config(cfg.hosts_file)
    entries = resolve_entries(listed, source) if resolve else listed
    check_server_ports(entries, cfg.servers_per_host, source)
    seen: dict[str, HostEntry] = {}
    for entry in entries:
        # DGL keeps a machine's part in /dev/shm under names without the part id, and finds its
        # machine id by address: two lines for one machine would silently mix parts.
        key = "this machine" if is_local(entry, local) else entry.address
        if key in seen:
            first = seen[key]
            other = f"Slurm node {first.node}" if first.node else f"line {first.line}"
            raise InputError(
                f"{entry.where(source)}: host {entry.address} is the same machine as {other} "
                f"({first.address}); DGL 2.1 serves one part per machine"
            )
        seen[key] = entry
    return entries


def make_plan(cfg: LaunchConfig, probed_gpus: list[int] | None = None) -> RunPlan:
    """Read the ip_config and the shard manifest, and plan (nothing is contacted). A dry run
    does not even resolve host names: it plans with the names and says which they are.
    With --gpus-per-host auto, `probed_gpus` are the hosts' counts (a host's own gpus=N
    line still wins); without them (a dry run) the plan shows one GPU per host."""
    local = local_addresses()
    hosts = load_hosts(cfg, local, resolve=cfg.dry_run is None)
    if cfg.gpus_auto and probed_gpus is not None:
        hosts = [replace(h, gpus=h.gpus or count or None) for h, count in zip(hosts, probed_gpus, strict=True)]
    elif cfg.gpus_auto:
        cfg = replace(cfg, gpus_per_host=1)
    manifest = shards.read_manifest(cfg.shards)
    job_id = cfg.job_id or rundir.new_job_id()
    if cfg.master_port is None:
        cfg = replace(cfg, master_port=rendezvous_port(hosts[0], local))
    return plan_run(
        cfg,
        hosts,
        local=local,
        run_dir=rundir.run_dir(cfg.workspace, job_id),
        job_id=job_id,
        num_parts=manifest.num_parts,
        cpu_count=os.cpu_count() or 1,
        unresolved=[entry.address for entry in hosts if not is_ipv4(entry.address)],
    )


def count_gpus(cfg: LaunchConfig) -> tuple[LaunchConfig, list[int]]:
    """--gpus-per-host auto: ask every host how many GPUs it has (the same probe that checks
    its ports); the job id and rendezvous port of this first plan are kept for the real one."""
    draft = make_plan(replace(cfg, gpus_auto=False, gpus_per_host=1))
    runners = [runner_for(cfg, draft, i) for i in range(len(draft.hosts))]
    counts = preflight(cfg, draft, runners) or []
    for entry, count in zip(draft.hosts, counts, strict=True):
        if count == 0 and entry.gpus is None:
            raise InputError(f"--gpus-per-host auto: host {entry.address} ({entry.where(cfg.hosts_source)}) has no "
                             "GPU; a job trains on GPUs on every host or on none")
    return replace(cfg, job_id=draft.job_id, master_port=draft.master_port), counts


def rendezvous_port(first: HostEntry, local: set[str]) -> int:
    """A port free now on the first host when it is this machine; torchrun's usual one on a
    remote host (the preflight still checks it is free there)."""
    if not is_local(first, local):
        return DEFAULT_MASTER_PORT
    with socket.socket() as sock:
        sock.bind((first.address, 0))
        return sock.getsockname()[1]


def runner_for(cfg: LaunchConfig, plan: RunPlan, index: int) -> Runner:
    entry = plan.hosts[index]
    if plan.host_is_local(index):
        return LocalRunner(host=entry.address)
    # Shorter than our own grace, so the remote side has used SIGKILL before we drop the link.
    remote_grace_s = max(1.0, cfg.stop_grace_s - 3.0)
    if entry.node is not None:
        return SrunRunner(host=entry.address, python=cfg.python, node=entry.node, job_id=cfg.slurm_job_id,
                          remote_grace_s=remote_grace_s)
    return SshRunner(
        host=entry.address,
        python=cfg.python,
        user=cfg.ssh_user,
        port=cfg.ssh_port,
        options=list(cfg.ssh_options),
        connect_timeout_s=cfg.connect_timeout_s,
        remote_grace_s=remote_grace_s,
    )


@dataclass(frozen=True)
class HostReport:
    busy: list[int]
    gpus: int | None


def probe_host(cfg: LaunchConfig, plan: RunPlan, runner: Runner, index: int) -> HostReport:
    """Reach the host the way processes will be started; check its ports (and GPUs)."""
    entry = plan.hosts[index]
    where = f"host {entry.address} ({entry.where(cfg.hosts_source)})"
    argv = [cfg.python, "-m", "distgnn.launcher.probe", "--address", entry.address]
    for port in plan.host_ports(index):
        argv += ["--port", str(port)]
    if plan.on_gpu:
        argv.append("--gpus")
    if cfg.allocator == "tcmalloc":
        argv += ["--library", TCMALLOC]
    try:
        done = runner.capture(argv, timeout=PROBE_TIMEOUT_S + cfg.connect_timeout_s)
    except subprocess.TimeoutExpired:
        raise InputError(f"{where}: no answer within {PROBE_TIMEOUT_S + cfg.connect_timeout_s:.0f} s") from None
    except OSError as exc:
        raise InputError(f"{where}: cannot run {argv[0]}: {exc.strerror}") from None
    if done.returncode == 255 and isinstance(runner, SshRunner):
        raise InputError(f"{where}: {_ssh_problem(done.stderr)}")
    if done.returncode != 0 and isinstance(runner, SrunRunner) and "srun: error" in done.stderr:
        raise InputError(f"{where}: srun could not start a step there: {_last(done.stderr)}")
    if done.returncode != 0:
        raise InputError(f"{where}: host check failed (exit {done.returncode}): {_last(done.stderr)}")
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise InputError(f"{where}: host check printed no result: {_last(done.stdout + done.stderr)}") from None
    if report["error"]:
        raise InputError(f"{where}: {report['error']}")
    if report.get("missing"):
        raise InputError(
            f"{where}: --allocator tcmalloc needs {report['missing'][0]}, which is not installed there "
            "(Debian: libtcmalloc-minimal4); install it or pass --allocator system"
        )
    return HostReport(busy=list(report["busy"]), gpus=report["gpus"])


def _ssh_problem(stderr: str) -> str:
    if "Host key verification failed" in stderr:
        return (
            "unknown or changed SSH host key (ssh: Host key verification failed); add the host's key to "
            "known_hosts (ssh-keyscan, after checking it) or pass --ssh-option=-oUserKnownHostsFile=FILE"
        )
    if "Permission denied" in stderr:
        return f"ssh login refused (batch mode, no password prompts): {_last(stderr)}"
    return f"unreachable over ssh: {_last(stderr)}"


def _last(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def preflight(cfg: LaunchConfig, plan: RunPlan, runners: list[Runner]) -> list[int] | None:
    """Check every host in parallel before anything starts; GPU counts when GPUs are asked for."""
    with ThreadPoolExecutor(max_workers=min(16, len(runners))) as pool:
        futures = [pool.submit(probe_host, cfg, plan, runners[i], i) for i in range(len(runners))]
        reports = [f.result() for f in futures]  # the first failing host, in ip_config order, is reported
    for index, report in enumerate(reports):
        if report.busy:
            port = report.busy[0]
            use = next(p.role for p in plan.on_host(index) if port in p.ports)
            if index == 0 and port == plan.master_port:
                use = "trainer rendezvous, --master-port"
            raise InputError(
                f"host {plan.hosts[index].address} ({plan.hosts[index].where(cfg.hosts_source)}): "
                f"port {port} ({use}) is already in use"
            )
    return [r.gpus or 0 for r in reports] if plan.on_gpu else None


def stage_files(plan: RunPlan, index: int) -> list[tuple[Path, str]]:
    """What host `index` receives in its run folder: (local source, name there).

    The ip_config goes to every remote host; with staged shards, a host gets the manifest,
    link prediction's held-out pairs when the shards have them (every trainer scores its
    share), and its own part's info file and table files only."""
    files: list[tuple[Path, str]] = []
    if not plan.host_is_local(index):
        files.append((plan.ip_config_path, plan.ip_config_path.name))
    if plan.stage_shards:
        root, staged = plan.shards_source, plan.shards_path.relative_to(plan.run_dir)
        files.append((root / shards.MANIFEST, str(staged / shards.MANIFEST)))
        files += [(root / name, str(staged / name)) for name in shards.LINK_FILES.values() if (root / name).exists()]
        files += [(path, str(staged / path.relative_to(root))) for path in shards.part_ref(root, index).files()]
    return files


def stage(cfg: LaunchConfig, plan: RunPlan, runners: list[Runner]) -> None:
    """Give every host the run's ip_config and, with --stage-shards, its own part only.
    A host that sees this machine's run folder (a shared filesystem) gets its files by a
    copy made here, once: hosts extracting the same file into one shared folder at once
    could interleave their writes."""

    def shared(index: int) -> bool:
        try:
            return runners[index].shares_folder(plan.run_dir, timeout=STAGE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InputError(f"host {plan.hosts[index].address}: staging failed: {exc}") from None

    def one(index: int, runner: Runner) -> None:
        files = stage_files(plan, index)
        if files:
            try:
                runner.put_files(files, plan.run_dir, timeout=STAGE_TIMEOUT_S)
            except OSError as exc:
                raise InputError(f"host {plan.hosts[index].address}: staging failed: {exc}") from None

    with ThreadPoolExecutor(max_workers=min(16, len(runners))) as pool:
        here = list(pool.map(shared, range(len(runners))))
        for index in (i for i in range(len(runners)) if here[i]):
            one(index, LocalRunner(host=plan.hosts[index].address))
        for future in [pool.submit(one, i, runners[i]) for i in range(len(runners)) if not here[i]]:
            future.result()


def execute(
    cfg: LaunchConfig,
    plan: RunPlan,
    runners: list[Runner],
    out: TextIO,
    monitor: RunMonitor | NullMonitor = NULL_MONITOR,
) -> RunResult:
    """Start servers, then trainer groups, and supervise them; SIGINT/SIGTERM stop the run."""
    sup = Supervisor(out, stop_grace_s=cfg.stop_grace_s, server_linger_s=cfg.server_linger_s, monitor=monitor,
                     hang_timeout_s=cfg.hang_timeout_s)

    def on_signal(signum: int, _frame: object) -> None:
        sup.request_stop(f"{signal.Signals(signum).name} received", signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        ordered = sorted(plan.processes, key=lambda p: p.role != "server")
        for spec in ordered:
            if sup.stop_signal is not None:
                break
            try:
                sup.add(runners[spec.host_index].start(spec))
            except OSError as exc:
                # The ones already started must still be stopped: let the supervisor do it.
                sup.request_stop(f"cannot start {spec.label}: {exc}")
                break
        else:
            monitor.run_state("running")
        return sup.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def launch(cfg: LaunchConfig, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one launch; return the exit status (0 ok, 1 failed, 128+N stopped by signal N)."""
    out, err = out or sys.stdout, err or sys.stderr
    probed = None
    if cfg.gpus_auto and cfg.dry_run is None:
        cfg, probed = count_gpus(cfg)
    plan = make_plan(cfg, probed)
    if cfg.gpus_auto and cfg.dry_run is not None:
        err.write("launch: --gpus-per-host auto counts each host's GPUs at the start; this plan shows one per host\n")
    if cfg.dry_run == "json":
        out.write(json.dumps(plan_to_json(plan), indent=2) + "\n")
        return 0
    if cfg.dry_run == "text":
        out.write(format_plan(plan) + "\n")
        return 0
    if plan.run_dir.exists() and not cfg.resume:
        raise InputError(f"--job-id {plan.job_id}: run folder {plan.run_dir} already exists "
                         f"(launch --resume {plan.job_id} continues it)")
    runners = [runner_for(cfg, plan, i) for i in range(len(plan.hosts))]
    gpu_counts = preflight(cfg, plan, runners)
    if gpu_counts is not None:
        check_gpus(cfg, plan.hosts, gpu_counts, plan.host_trainers)
    if cfg.resume:
        prepare_resume(cfg, plan, runners, out)
    # Before the run folder is written and anything started: a taken launcher port or an
    # unwritable targets file is bad input like any other.
    monitor = start_monitor(cfg.metrics_port, cfg.metrics_addr, plan, err)
    try:
        result = run_started(cfg, plan, runners, monitor, out)
        interrupted = collect(cfg, plan, runners, out, err)
        code = report(plan, result, out, err)
        if monitor.active and result.status != "interrupted" and not interrupted:
            # Whoever pressed Ctrl-C wants out; otherwise let a last scrape see how the run ended.
            linger(cfg.metrics_linger_s, out)
        return code
    finally:
        monitor.close()


def collect(cfg: LaunchConfig, plan: RunPlan, runners: list[Runner], out: TextIO, err: TextIO) -> bool:
    """Bring every other host's share of the run to this machine, however the run ended:
    its run logs and torchrun's logs (the run folder's logs/), and the train command's
    output folders (predictions, checkpoints). Hosts need not share a filesystem; a host
    that cannot be reached costs a line, not the run's result. Ctrl-C or SIGTERM ends the
    wait for it (returns True: the caller skips its linger too); no new copy starts, and
    one under way ends on its own before the process exits."""
    remote = [i for i in range(len(plan.hosts)) if not plan.host_is_local(i)]
    if not remote:
        return False
    folders = [rundir.logs_dir(plan.run_dir), *cfg.collect]
    problems: list[str] = []
    stop = threading.Event()

    def one(index: int) -> int:
        got = 0
        for folder in folders:
            if stop.is_set():
                break
            try:
                if not runners[index].shares_folder(folder, timeout=COLLECT_TIMEOUT_S):
                    got += runners[index].get_folder(folder, folder, timeout=COLLECT_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                problems.append(str(exc))
        return got

    previous = _on_stop_signals(stop.set)
    pool = ThreadPoolExecutor(max_workers=min(16, len(remote)))
    try:
        futures = [pool.submit(one, i) for i in remote]
        while not stop.is_set() and not all(f.done() for f in futures):
            wait(futures, timeout=0.2)
    finally:
        pool.shutdown(wait=not stop.is_set(), cancel_futures=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop.is_set():
        out.write("launch: stopped copying files back from the other hosts (signal received)\n")
        return True
    copied = sum(f.result() for f in futures)
    if copied:
        out.write(f"launch: copied {copied} folder(s) back from {len(remote)} other host(s) into "
                  f"{', '.join(str(f) for f in folders)}\n")
    for problem in problems:
        err.write(f"launch: warning: {problem}\n")
    return False


def _on_stop_signals(handler) -> dict:
    """Route SIGINT and SIGTERM to `handler`; the previous handlers (none off the main thread)."""
    try:
        return {sig: signal.signal(sig, lambda _s, _f: handler()) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:
        return {}


def prepare_resume(cfg: LaunchConfig, plan: RunPlan, runners: list[Runner], out: TextIO) -> None:
    """Before a resumed attempt: keep the last attempt's records in the run folder, clear the
    hosts' copies of its logs (they are here already) and give every other host the newest
    complete checkpoint, which only rank 0's host wrote."""
    from distgnn.trainer.checkpoint import shared_files

    files = shared_files(cfg.checkpoint_dir) if cfg.checkpoint_dir is not None else []
    if cfg.checkpoint_dir is not None and not files:
        raise InputError(f"--resume {plan.job_id}: no complete checkpoint in {cfg.checkpoint_dir} on this machine")
    attempt = rundir.archive_attempt(plan.run_dir)
    out.write(f"launch: resuming job {plan.job_id}; the last attempt's records are in {attempt}\n")
    logs = str(rundir.logs_dir(plan.run_dir))

    def one(index: int) -> None:
        runner = runners[index]
        try:
            runner.capture(["rm", "-rf", logs], timeout=COLLECT_TIMEOUT_S)
            if files and not runner.shares_folder(cfg.checkpoint_dir, timeout=COLLECT_TIMEOUT_S):
                runner.put_files([(f, f.name) for f in files], cfg.checkpoint_dir, timeout=STAGE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InputError(f"host {plan.hosts[index].address}: preparing the resume failed: {exc}") from None

    with ThreadPoolExecutor(max_workers=min(16, len(runners))) as pool:
        for future in [pool.submit(one, i) for i in range(len(runners)) if not plan.host_is_local(i)]:
            future.result()


def run_started(
    cfg: LaunchConfig, plan: RunPlan, runners: list[Runner], monitor: RunMonitor | NullMonitor, out: TextIO
) -> RunResult:
    """Everything checked: write the run folder, stage, run and record the run."""
    rundir.write_plan(plan.run_dir, plan_to_json(plan))
    rundir.write_text(plan.run_dir / configfile.RESOLVED_NAME, configfile.dump(cfg.resolved))
    rundir.write_text(plan.ip_config_path, format_ip_config(plan.hosts))
    try:
        stage(cfg, plan, runners)
    except InputError as exc:
        rundir.write_status(plan.run_dir, {"job_id": plan.job_id, "status": "failed", "stop_reason": str(exc)})
        raise
    out.write(f"launch: job {plan.job_id}, {len(plan.processes)} process(es) on {len(plan.hosts)} host(s); "
              f"run folder {plan.run_dir}\n")
    if monitor.active:
        target = monitor.launcher_target
        out.write(f"launch: metrics at http://{target.hostport}/metrics, targets {monitor.targets_path}\n")
    out.flush()
    result = execute(cfg, plan, runners, out, monitor)
    monitor.run_state("succeeded" if result.status == "succeeded" else "failed")
    rundir.write_status(plan.run_dir, {"job_id": plan.job_id, "run_dir": str(plan.run_dir), **result.to_json()})
    return result


def report(plan: RunPlan, result: RunResult, out: TextIO, err: TextIO) -> int:
    """Say how the run ended; the exit status (0 ok, 1 failed, 128+N stopped by signal N)."""
    if result.status == "succeeded":
        out.write(f"launch: job {plan.job_id} succeeded; run folder {plan.run_dir}\n")
        return 0
    err.write(f"launch: job {plan.job_id} {result.status}\n{format_report(result, str(plan.run_dir))}\n")
    if result.status == "interrupted" and result.stop_signal is not None:
        return 128 + result.stop_signal
    return 1


def linger(seconds: float, out: TextIO) -> None:
    """Keep the launcher's /metrics up a little after the run so a scrape sees its final state;
    Ctrl-C or SIGTERM ends the wait at once."""
    if seconds <= 0:
        return
    done = threading.Event()
    previous = {sig: signal.signal(sig, lambda _s, _f: done.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        out.write(f"launch: keeping /metrics up for {seconds:g} s for a last scrape "
                  "(--metrics-linger; Ctrl-C ends it)\n")
        out.flush()
        deadline = time.monotonic() + seconds
        # Short waits: the handler runs between them even where a long wait would not wake.
        while not done.is_set() and (left := deadline - time.monotonic()) > 0:
            done.wait(min(left, 0.2))
    except (OSError, ValueError):
        pass  # our stdout went away; nobody is watching the linger either
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
