"""Start processes of a plan on their hosts: directly on this machine; elsewhere through
OpenSSH, or through Slurm's srun inside an allocation.

Every started process lives in its own process group (session), so stopping it stops
its children too (torchrun's workers, DGL's sampler processes). Remote processes run
under `distgnn.launcher.remote_exec`, which stops the remote group when its stdin (the
ssh connection's, or the srun step's) closes: that is how a remote process is stopped,
and why nothing is left behind when the launcher itself dies.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from distgnn.launcher.plan import ProcessSpec


class Running(Protocol):
    """A started process: its merged stdout/stderr pipe and how to stop it."""

    spec: ProcessSpec
    popen: subprocess.Popen

    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def sweep(self) -> None: ...


class Runner(Protocol):
    host: str

    def start(self, spec: ProcessSpec) -> Running: ...
    def capture(self, argv: list[str], *, timeout: float) -> subprocess.CompletedProcess: ...
    def put_files(self, files: list[tuple[Path, str]], dest: Path, *, timeout: float) -> None: ...
    def get_folder(self, source: Path, dest: Path, *, timeout: float) -> bool: ...
    def shares_folder(self, folder: Path, *, timeout: float) -> bool: ...


def killpg(pgid: int, sig: int) -> None:
    """Signal a process group that may already be gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Reaper:
    """The launcher's end of distgnn.launcher.reaper: one per launcher process, started
    with the first local process; it lists every local process group so that they are
    stopped even when the launcher is killed with SIGKILL."""

    _instance: "Reaper | None" = None

    def __init__(self, grace_s: float) -> None:
        import sys

        self._popen = subprocess.Popen(
            [sys.executable, "-m", "distgnn.launcher.reaper", "--grace", str(grace_s)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, text=True,
        )

    @classmethod
    def shared(cls, grace_s: float = 5.0) -> "Reaper":
        if cls._instance is None or cls._instance._popen.poll() is not None:
            cls._instance = cls(grace_s)
        return cls._instance

    def _send(self, line: str) -> None:
        try:
            self._popen.stdin.write(line + "\n")
            self._popen.stdin.flush()
        except (OSError, ValueError):
            pass  # a dead reaper only loses the safety net

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}")


@dataclass
class LocalProcess:
    spec: ProcessSpec
    popen: subprocess.Popen
    reaper: Reaper | None = None

    def terminate(self) -> None:
        killpg(self.popen.pid, signal.SIGTERM)

    def kill(self) -> None:
        killpg(self.popen.pid, signal.SIGKILL)

    def sweep(self) -> None:
        # The leader may be gone while re-parented members of its group live on.
        killpg(self.popen.pid, signal.SIGKILL)
        if self.reaper is not None:
            self.reaper.forget(self.popen.pid)


@dataclass
class LocalRunner:
    """Runs on this machine: subprocess in a new session, killed by process group; every
    group is listed with the Reaper, which stops it if the launcher dies first."""

    host: str = "localhost"
    reaper_grace_s: float = 5.0

    def start(self, spec: ProcessSpec) -> LocalProcess:
        reaper = Reaper.shared(self.reaper_grace_s)
        popen = subprocess.Popen(
            spec.argv,
            env={**os.environ, **spec.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        reaper.watch(popen.pid)
        return LocalProcess(spec, popen, reaper)

    def capture(self, argv: list[str], *, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def put_files(self, files: list[tuple[Path, str]], dest: Path, *, timeout: float) -> None:
        for source, name in files:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True)
            elif source.resolve() != target.resolve():
                shutil.copy2(source, target)

    def shares_folder(self, folder: Path, *, timeout: float) -> bool:
        return True

    def get_folder(self, source: Path, dest: Path, *, timeout: float) -> bool:
        """This machine's folder is already here when it is the same path."""
        if not source.is_dir():
            return False
        if source.resolve() != dest.resolve():
            shutil.copytree(source, dest, dirs_exist_ok=True)
        return True


@dataclass
class RemoteProcess:
    spec: ProcessSpec
    popen: subprocess.Popen

    def terminate(self) -> None:
        # EOF on remote_exec's stdin: it stops the remote group (TERM, then KILL) and exits.
        try:
            if self.popen.stdin and not self.popen.stdin.closed:
                self.popen.stdin.close()
        except OSError:
            pass

    def kill(self) -> None:
        # Dropping the connection also closes remote_exec's stdin; the ssh client is ours to kill.
        self.terminate()
        killpg(self.popen.pid, signal.SIGKILL)

    def sweep(self) -> None:
        self.kill()


class CommandRunner:
    """Runs on another host by prefixing every command with a client (ssh, srun) whose
    stdin reaches the remote command; each process runs under remote_exec there."""

    host: str
    python: str
    remote_grace_s: float

    def remote_argv(self, argv: list[str]) -> list[str]:
        raise NotImplementedError

    def wrapped(self, spec: ProcessSpec) -> list[str]:
        argv = [self.python, "-m", "distgnn.launcher.remote_exec", "--grace", str(self.remote_grace_s)]
        for name, value in spec.env.items():
            argv += ["--env", f"{name}={value}"]
        return [*argv, "--", *spec.argv]

    def start(self, spec: ProcessSpec) -> RemoteProcess:
        popen = subprocess.Popen(
            self.remote_argv(self.wrapped(spec)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return RemoteProcess(spec, popen)

    def capture(self, argv: list[str], *, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.remote_argv(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )

    def put_files(self, files: list[tuple[Path, str]], dest: Path, *, timeout: float) -> None:
        """Stream the files as a tar archive into `dest` on the host (created if missing)."""
        made = self.capture(["mkdir", "-p", str(dest)], timeout=timeout)
        if made.returncode != 0:
            raise OSError(f"host {self.host}: cannot create {dest}: {_last_line(made.stderr)}")
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                self.remote_argv(["tar", "-x", "-f", "-", "-C", str(dest)]),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            try:
                _write_tar(proc.stdin, files)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the client or tar gave up; its stderr below says why
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise OSError(f"host {self.host}: copying to {dest} took over {timeout:.0f} s") from None
            if proc.returncode != 0:
                err.seek(0)
                why = _last_line(err.read().decode(errors="replace"))
                raise OSError(f"host {self.host}: copying to {dest} failed: {why}")

    def shares_folder(self, folder: Path, *, timeout: float) -> bool:
        """Whether the host sees this machine's `folder` itself (a shared filesystem, or the
        emulated hosts of the tests): a marker file made here is visible there. Copying a
        folder onto itself would truncate files while they are being read."""
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / f".distgnn-shared-{secrets.token_hex(8)}"
        marker.touch()
        try:
            done = self.capture(["test", "-e", str(marker)], timeout=timeout)
        finally:
            marker.unlink(missing_ok=True)
        if done.returncode not in (0, 1):
            raise OSError(f"host {self.host}: cannot look at {folder}: {_last_line(done.stderr)}")
        return done.returncode == 0

    def get_folder(self, source: Path, dest: Path, *, timeout: float) -> bool:
        """Copy the host's folder `source` into this machine's `dest` (merged into what is
        there); False when the host has no such folder."""
        probe = self.capture(["test", "-d", str(source)], timeout=timeout)
        if probe.returncode != 0:
            if probe.returncode == 1:
                return False
            raise OSError(f"host {self.host}: cannot look at {source}: {_last_line(probe.stderr)}")
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(self.remote_argv(["tar", "-c", "-f", "-", "-C", str(source), "."]),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                _read_tar(proc.stdout, dest)
            except (tarfile.TarError, OSError) as exc:
                proc.kill()
                raise OSError(f"host {self.host}: copying {source} back failed: {exc}") from None
            finally:
                timer.cancel()
                proc.stdout.close()
                proc.wait()
            if proc.returncode != 0:
                err.seek(0)
                why = _last_line(err.read().decode(errors="replace"))
                raise OSError(f"host {self.host}: copying {source} back failed: {why}")
        return True


@dataclass
class SshRunner(CommandRunner):
    """Runs on a remote host with the system's OpenSSH client (batch mode, host keys checked)."""

    host: str
    python: str
    user: str | None = None
    port: int | None = None
    options: list[str] = field(default_factory=list)
    connect_timeout_s: int = 10
    remote_grace_s: float = 5.0

    def remote_argv(self, argv: list[str]) -> list[str]:
        """ssh ... HOST -- 'quoted remote command'. BatchMode comes first: ssh keeps the first
        value of an option, so it cannot be turned off; the user's options come before our
        other defaults so they can override those."""
        ssh = ["ssh", "-o", "BatchMode=yes", *self.options]
        ssh += ["-o", f"ConnectTimeout={self.connect_timeout_s}"]
        # A host that dies silently is noticed within ~15 s instead of TCP's many minutes.
        ssh += ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if self.port is not None:
            ssh += ["-p", str(self.port)]
        if self.user is not None:
            ssh += ["-l", self.user]
        return [*ssh, self.host, "--", shlex.join(argv)]

    ssh_argv = remote_argv


@dataclass
class SrunRunner(CommandRunner):
    """Runs on a node of the current Slurm allocation as a job step (`srun`): no sshd or keys.
    A step's stdin is forwarded to its task, so remote_exec stops the process when we go."""

    host: str
    python: str
    node: str
    """Slurm's name of the node."""
    job_id: str
    remote_grace_s: float = 5.0

    def remote_argv(self, argv: list[str]) -> list[str]:
        from distgnn.launcher.slurm import srun_argv

        return srun_argv(self.job_id, self.node, argv)


def _read_tar(stream: IO[bytes], dest: Path) -> None:
    """Unpack a streamed archive under `dest`; the 'data' filter refuses absolute names,
    '..', links out of `dest` and device files, so a host cannot write outside it."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        tar.extractall(dest, filter="data")


def _write_tar(stream: IO[bytes], files: list[tuple[Path, str]]) -> None:
    with tarfile.open(fileobj=stream, mode="w|") as tar:
        for source, name in files:
            tar.add(str(source), arcname=name)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
