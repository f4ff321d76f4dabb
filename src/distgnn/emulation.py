"""Several emulated hosts on one Linux machine (root only), for multi-host tests and demos.

Each host is a network namespace on a private bridge with its own 198.18.X.Y address
(198.18.0.0/15 is reserved for benchmarking, so it never meets a real network) and a
mount namespace with its own tmpfs on /dev/shm. Both are needed by DGL: a client finds
its machine id by matching ip_config addresses against its NICs, and a host's partition
lives in /dev/shm under names without the partition id (see DGL-NOTES, pitfall 1).

All processes of one host must share one /dev/shm (a graph server and its trainers
exchange the partition through it), so each host has an "anchor" process that holds the
mount namespace, and every process of the host, an sshd included, is started inside the
anchor's namespaces with nsenter.

Names of namespaces and links start with a short per-run prefix, and a per-run state
folder under /run/distgnn-emu records the owner's pid, so parallel runs do not collide
and `cleanup_stale` only removes what a dead run left behind.
"""

from __future__ import annotations

import fcntl
import fnmatch
import ipaddress
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

STATE_ROOT = Path("/run/distgnn-emu")
"""Per-run state folders (keys, sshd configs, logs, owner pid); /run is root-owned, so
sshd's StrictModes accepts key files kept here, unlike under the world-writable /tmp."""

SUBNET_PARENT = ipaddress.IPv4Network("198.18.0.0/16")
MAX_HOSTS = 200
SSH_USER = "root"
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_ANCHOR_SCRIPT = "mount -t tmpfs tmpfs /dev/shm && echo ready && exec sleep infinity"
_COMMAND_TIMEOUT_S = 15.0
_TERM_GRACE_S = 3.0


class EmulationError(RuntimeError):
    """Setting up or tearing down the emulated hosts failed (with the failing command's output)."""


@dataclass(frozen=True)
class EmulatedHost:
    """One emulated host."""

    name: str
    """Human-readable name, `host0`, `host1`, ..."""
    address: str
    """IPv4 address of the host on the emulation bridge."""
    netns: str
    """Network namespace name (`ip netns exec NETNS ...`)."""


class EmulatedHosts:
    """Context manager creating `n` emulated hosts; everything is removed on exit.

    `sshd=True` starts a real OpenSSH server in every host (port 22 on its address) that
    accepts a throw-away client key; `ssh_options()` gives the client arguments, with
    host-key checking on against a known_hosts file listing every host.
    """

    def __init__(self, n: int, *, sshd: bool = False, prefix: str | None = None) -> None:
        if not 1 <= n <= MAX_HOSTS:
            raise ValueError(f"number of emulated hosts must be 1..{MAX_HOSTS}, got {n}")
        if prefix is not None and not _PREFIX_RE.match(prefix):
            raise ValueError(f"prefix {prefix!r} must be 1-8 characters [a-z0-9], starting with a letter")
        self.n = n
        self.sshd = sshd
        self.prefix = prefix or f"dg{secrets.token_hex(3)}"
        self.hosts: list[EmulatedHost] = []
        self.ssh_user = SSH_USER
        self.state_dir = STATE_ROOT / self.prefix
        self.client_key: Path | None = None
        self.known_hosts: Path | None = None
        self._bridge = f"{self.prefix}br"
        self._anchors: list[subprocess.Popen] = []
        self._sshds: list[subprocess.Popen] = []
        self._started: list[subprocess.Popen] = []
        self._owns_prefix = False
        self.gateway = ""
        """This machine's address on the hosts' bridge (where a controller they reach listens)."""

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> "EmulatedHosts":
        if os.geteuid() != 0:
            raise EmulationError("emulated hosts need root (network namespaces, mounts); run as root")
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except EmulationError:
            # Do not hide the error that ended the block behind a teardown error.
            if exc is None:
                raise

    def _setup(self) -> None:
        try:
            _write_owner(self.state_dir)
        except FileExistsError:
            raise EmulationError(f"emulation prefix {self.prefix!r} is in use ({self.state_dir} exists)") from None
        self._owns_prefix = True
        subnet = self._claim_subnet()
        self.gateway = str(subnet.network_address + 1)
        for i in range(self.n):
            host = EmulatedHost(f"host{i}", str(subnet.network_address + 11 + i), f"{self.prefix}h{i}")
            self.hosts.append(host)
            self._add_host(i, host, subnet.prefixlen)
        for i in range(self.n):
            self._anchors.append(self._start_anchor(self.hosts[i]))
        if self.sshd:
            self._start_sshds()

    def close(self) -> None:
        """Stop every process of the hosts and delete namespaces, links and state."""
        _stop_groups(self._started)
        _stop_groups(self._sshds)
        if not self._owns_prefix:
            return  # another run's names: never touch them
        self._owns_prefix = False  # close() twice must not touch a later run reusing the prefix
        _teardown_prefix(self.prefix, [h.netns for h in self.hosts])
        for proc in self._anchors + self._sshds + self._started:
            _reap(proc)

    # -- network -----------------------------------------------------------------

    def _claim_subnet(self) -> ipaddress.IPv4Network:
        """Pick a free 198.18.X.0/24 and give it to this run's bridge, under a lock so
        two runs starting at once cannot pick the same one."""
        STATE_ROOT.mkdir(mode=0o755, exist_ok=True)
        with open(STATE_ROOT / "subnet.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            subnet = _free_subnet(_used_ipv4_addresses(), start=int(self.prefix.encode().hex(), 16))
            _ip("link", "add", self._bridge, "type", "bridge")
            _ip("addr", "add", f"{subnet.network_address + 1}/{subnet.prefixlen}", "dev", self._bridge)
            _ip("link", "set", self._bridge, "up")
        return subnet

    def _add_host(self, i: int, host: EmulatedHost, prefixlen: int) -> None:
        veth = f"{self.prefix}v{i}"
        _ip("netns", "add", host.netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", veth, "master", self._bridge, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/{prefixlen}", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")

    def _start_anchor(self, host: EmulatedHost) -> subprocess.Popen:
        argv = ["ip", "netns", "exec", host.netns, "unshare", "-m", "--propagation", "private",
                "sh", "-c", _ANCHOR_SCRIPT]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        line = _read_line(proc, _COMMAND_TIMEOUT_S)
        if line.strip() != b"ready":
            _stop_groups([proc])
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise EmulationError(f"{host.name}: could not mount a private /dev/shm: {err or 'no output'}")
        proc.stdout.close()
        proc.stderr.close()
        return proc

    # -- processes ---------------------------------------------------------------

    def enter_argv(self, i: int) -> list[str]:
        """The argv prefix that runs a command inside host i (its network and /dev/shm)."""
        anchor = self._anchors[i]
        return ["nsenter", f"--target={anchor.pid}", "--net", "--mount", "--"]

    def popen(self, i: int, argv: Sequence[str], env: dict[str, str] | None = None,
              **popen_kwargs) -> subprocess.Popen:
        """Start `argv` in host i in a new session; it is killed (whole group) on exit."""
        popen_kwargs.setdefault("start_new_session", True)
        if not popen_kwargs["start_new_session"]:
            raise ValueError("processes in emulated hosts must start a new session (killed by group)")
        proc = subprocess.Popen([*self.enter_argv(i), *argv], env=env, **popen_kwargs)
        self._started.append(proc)
        return proc

    def run(self, i: int, argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
            check: bool = False, input: str | None = None) -> subprocess.CompletedProcess:
        """Run `argv` in host i to completion (text output captured); the group is killed on timeout."""
        proc = self.popen(i, argv, env=env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_groups([proc])
            proc.communicate()
            raise
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check:
            result.check_returncode()
        return result

    # -- sshd --------------------------------------------------------------------

    def _start_sshds(self) -> None:
        # sshd refuses to start without its privilege-separation directory.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.client_key = self.state_dir / "client_ed25519"
        _keygen(self.client_key, "distgnn-emulation-client")
        known = []
        for i, host in enumerate(self.hosts):
            host_key = self.state_dir / f"{host.name}_host_ed25519"
            _keygen(host_key, f"distgnn-{host.name}")
            key_type, key_data = host_key.with_suffix(".pub").read_text().split()[:2]
            known.append(f"{host.address} {key_type} {key_data}\n")
            config = self.state_dir / f"{host.name}_sshd_config"
            config.write_text(_sshd_config(host, host_key, self.client_key.with_suffix(".pub"),
                                           self._sshd_pidfile(i)))
            log = open(self.state_dir / f"{host.name}_sshd.log", "wb")
            with log:
                self._sshds.append(subprocess.Popen(
                    [*self.enter_argv(i), "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True))
        self.known_hosts = self.state_dir / "known_hosts"
        self.known_hosts.write_text("".join(known))
        for i, host in enumerate(self.hosts):
            self._wait_sshd(i, host)

    def _sshd_pidfile(self, i: int) -> Path:
        return self.state_dir / f"{self.hosts[i].name}_sshd.pid"

    def _wait_sshd(self, i: int, host: EmulatedHost, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._sshds[i].poll() is not None:
                log = (self.state_dir / f"{host.name}_sshd.log").read_text(errors="replace").strip()
                raise EmulationError(f"{host.name}: sshd exited with {self._sshds[i].returncode}: {log[-500:]}")
            if _ssh_banner(host.address, 22):
                return
            if time.monotonic() > deadline:
                raise EmulationError(f"{host.name}: sshd not accepting on {host.address}:22 after {timeout:.0f} s")
            time.sleep(0.05)

    def ssh_options(self) -> list[str]:
        """ssh client arguments for the emulated hosts: throw-away key, host keys checked."""
        if self.client_key is None or self.known_hosts is None:
            raise EmulationError("ssh_options() needs EmulatedHosts(..., sshd=True)")
        # -F none: ignore ~/.ssh/config and /etc/ssh/ssh_config (their SendEnv and identities).
        return ["-F", "none", "-i", str(self.client_key), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5"]


# -- stale runs --------------------------------------------------------------------


def cleanup_stale(prefix_glob: str = "dg*") -> list[str]:
    """Remove namespaces, links and state of runs matching `prefix_glob` whose owner
    process is gone (a crashed or killed run); runs still alive are left alone.
    Returns the prefixes removed."""
    netns = _netns_names()
    folders = [p for p in STATE_ROOT.iterdir() if p.is_dir()] if STATE_ROOT.is_dir() else []
    prefixes = {p.name for p in folders if not p.name.startswith(".")}
    prefixes |= {m.group(1) for m in map(re.compile(r"^(.+)h\d+$").match, netns) if m}
    prefixes |= {m.group(1) for m in map(re.compile(r"^(.+)(?:br|v\d+)$").match, _link_names()) if m}
    removed = []
    for prefix in sorted(p for p in prefixes if fnmatch.fnmatchcase(p, prefix_glob)):
        if _owner_alive(STATE_ROOT / prefix):
            continue
        mine = [ns for ns in netns if re.fullmatch(re.escape(prefix) + r"h\d+", ns)]
        _teardown_prefix(prefix, mine)
        removed.append(prefix)
    return removed


# -- helpers -------------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
    if check and result.returncode != 0:
        raise EmulationError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _used_ipv4_addresses() -> list[ipaddress.IPv4Address]:
    out = json.loads(_ip("-j", "-4", "addr", "show").stdout or "[]")
    return [ipaddress.IPv4Address(a["local"]) for link in out for a in link.get("addr_info", [])]


def _free_subnet(used: list[ipaddress.IPv4Address], start: int) -> ipaddress.IPv4Network:
    """The first /24 of 198.18.0.0/16, probing from `start`, that holds none of `used`
    (198.18.0.0/24 is skipped: it is the documented default other tools reach for)."""
    subnets = list(SUBNET_PARENT.subnets(new_prefix=24))[1:]
    for k in range(len(subnets)):
        subnet = subnets[(start + k) % len(subnets)]
        if not any(address in subnet for address in used):
            return subnet
    raise EmulationError("no free /24 left in 198.18.0.0/16 for emulated hosts")


def _netns_names() -> list[str]:
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_names() -> list[str]:
    out = json.loads(_ip("-j", "link", "show").stdout or "[]")
    return [link["ifname"] for link in out]


def _write_owner(state_dir: Path) -> None:
    """Create the state folder with its owner record in one step (a rename), so
    `cleanup_stale` never sees a live run's folder without an owner."""
    STATE_ROOT.mkdir(mode=0o755, exist_ok=True)
    me = os.getpid()
    staging = STATE_ROOT / f".{state_dir.name}.{me}"
    staging.mkdir(mode=0o700)
    (staging / "owner").write_text(f"{me} {_start_time(me)}\n")
    if state_dir.exists():
        shutil.rmtree(staging)
        raise FileExistsError(state_dir)
    os.rename(staging, state_dir)


def _owner_alive(state_dir: Path) -> bool:
    try:
        pid_text, start = (state_dir / "owner").read_text().split()
    except (OSError, ValueError):
        return False
    # The start time guards against a recycled pid.
    return _start_time(int(pid_text)) == start


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat.rsplit(")", 1)[1].split()[19]


def _read_line(proc: subprocess.Popen, timeout: float) -> bytes:
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return b""
    return proc.stdout.readline()


def _keygen(path: Path, comment: str) -> None:
    result = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                            capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
    if result.returncode != 0:
        raise EmulationError(f"ssh-keygen {path}: {result.stderr.strip()}")


def _sshd_config(host: EmulatedHost, host_key: Path, authorized: Path, pidfile: Path) -> str:
    return "\n".join([
        f"ListenAddress {host.address}",
        "Port 22",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized}",
        f"PidFile {pidfile}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "PermitRootLogin prohibit-password",
        # No AcceptEnv: sessions get sshd's own sane PATH and nothing from the client.
        "PermitUserEnvironment no",
        "X11Forwarding no",
        "PrintMotd no",
        "LogLevel ERROR",
        "",
    ])


def _ssh_banner(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0) as sock:
            sock.settimeout(2.0)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _stop_groups(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every process group, wait a bounded time, then SIGKILL the rest."""
    live = [p for p in procs if _group_alive(p)]
    for proc in live:
        _killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + _TERM_GRACE_S
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        live = [p for p in live if _group_alive(p)]
    for proc in live:
        _killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        _reap(proc)


def _group_alive(proc: subprocess.Popen) -> bool:
    """Whether any process of the group still runs; zombies do not count (orphans are
    reaped by whatever pid 1 is, which can take seconds in a container)."""
    proc.poll()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(pgrp) == proc.pid and state != "Z":
            return True
    return False


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=_TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=_TERM_GRACE_S)


def _netns_pids(netns: str) -> list[int]:
    result = _ip("netns", "pids", netns, check=False)
    return [int(x) for x in result.stdout.split()]


def _kill_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _teardown_prefix(prefix: str, netns: list[str]) -> None:
    """Kill every process left in the namespaces, then delete namespaces, links, state."""
    errors = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for ns in netns:
            _kill_pids(_netns_pids(ns), sig)
        deadline = time.monotonic() + _TERM_GRACE_S
        while any(_netns_pids(ns) for ns in netns) and time.monotonic() < deadline:
            time.sleep(0.05)
    for ns in netns:
        if ns in _netns_names():
            result = _ip("netns", "del", ns, check=False)
            if result.returncode != 0:
                errors.append(f"ip netns del {ns}: {result.stderr.strip()}")
    # Deleting a namespace removes its veth pair only asynchronously: delete the root
    # ends (and the bridge) explicitly so a run leaves no link behind when it returns.
    for link in _link_names():
        if link == f"{prefix}br" or re.fullmatch(re.escape(prefix) + r"v\d+", link):
            result = _ip("link", "del", link, check=False)
            if result.returncode != 0 and "Cannot find device" not in result.stderr:
                errors.append(f"ip link del {link}: {result.stderr.strip()}")
    shutil.rmtree(STATE_ROOT / prefix, ignore_errors=True)
    if errors:
        raise EmulationError("teardown incomplete: " + "; ".join(errors))
