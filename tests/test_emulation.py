"""Emulated hosts: real network namespaces, bridge, private /dev/shm and sshd (needs root)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from distgnn.emulation import STATE_ROOT, EmulatedHosts, EmulationError, cleanup_stale

pytestmark = pytest.mark.netns

PY = sys.executable

LISTEN = textwrap.dedent("""
    import socket, sys
    srv = socket.create_server((sys.argv[1], 0))
    print(srv.getsockname()[1], flush=True)
    srv.settimeout(10)
    for _ in range(int(sys.argv[2])):
        conn, peer = srv.accept()
        with conn:
            conn.sendall(("hello " + peer[0]).encode())
""")

CONNECT = textwrap.dedent("""
    import socket, sys
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
        print(s.recv(100).decode())
""")


@pytest.fixture(autouse=True)
def _need_root():
    if os.geteuid() != 0:
        pytest.fail("test_emulation needs root (network namespaces, mounts, sshd); CI runs as root")


def _names(*cmd: str) -> str:
    return subprocess.run(["ip", *cmd], capture_output=True, text=True, timeout=10, check=True).stdout


def _leftovers(prefix: str) -> list[str]:
    netns = [line for line in _names("netns", "list").splitlines() if line.startswith(prefix)]
    links = [line for line in _names("-br", "link").splitlines() if line.startswith(prefix)]
    procs = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
             if any(prefix in part for part in (p.info["cmdline"] or []))]
    state = [str(STATE_ROOT / prefix)] if (STATE_ROOT / prefix).exists() else []
    return netns + links + [f"pid {pid}" for pid in procs] + state


def _ssh(emu: EmulatedHosts, i: int, command: str, options: list[str] | None = None):
    argv = ["ssh", *(options or emu.ssh_options()), f"{emu.ssh_user}@{emu.hosts[i].address}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=20)


def test_each_host_has_its_own_address():
    with EmulatedHosts(2) as emu:
        a0, a1 = (h.address for h in emu.hosts)
        assert a0 != a1 and a0.startswith("198.18.") and a1.startswith("198.18.")
        assert emu.hosts[0].netns != emu.hosts[1].netns
        bind = "import socket, sys; socket.socket().bind((sys.argv[1], 0))"
        assert emu.run(0, [PY, "-c", bind, a0], timeout=10).returncode == 0
        other = emu.run(0, [PY, "-c", bind, a1], timeout=10)
        assert other.returncode != 0 and "Cannot assign requested address" in other.stderr


def test_tcp_host_to_host_and_root_to_host():
    with EmulatedHosts(2) as emu:
        a0, a1 = (h.address for h in emu.hosts)
        server = emu.popen(0, [PY, "-c", LISTEN, a0, "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
        port = server.stdout.readline().strip()
        assert port.isdigit(), server.stderr.read()
        from_host1 = emu.run(1, [PY, "-c", CONNECT, a0, port], timeout=10)
        assert from_host1.stdout.strip() == f"hello {a1}", from_host1.stderr
        from_root = subprocess.run([PY, "-c", CONNECT, a0, port], capture_output=True, text=True, timeout=10)
        bridge = a0.rsplit(".", 1)[0] + ".1"
        assert from_root.stdout.strip() == f"hello {bridge}", from_root.stderr
        assert server.wait(timeout=10) == 0


def test_dev_shm_is_private_per_host_and_shared_within_host():
    with EmulatedHosts(2) as emu:
        name = f"/dev/shm/{emu.prefix}-marker"
        emu.run(0, ["sh", "-c", 'echo written > "$1"', "sh", name], timeout=10, check=True)
        # A second process of the same host sees it (a DGL server and its trainers share it).
        assert emu.run(0, ["cat", name], timeout=10).stdout == "written\n"
        assert emu.run(1, ["test", "-e", name], timeout=10).returncode == 1
        assert not os.path.exists(name)


def test_run_timeout_kills_the_process_group():
    with EmulatedHosts(1) as emu:
        marker = f"{emu.prefix}-timeout"
        with pytest.raises(subprocess.TimeoutExpired):
            # sh forks sleep: killing only sh would leave sleep running.
            emu.run(0, ["sh", "-c", 'sleep 30 & wait', marker], timeout=0.5)
        assert not [p for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]


def test_popen_must_start_a_new_session():
    with EmulatedHosts(1) as emu:
        with pytest.raises(ValueError, match="new session"):
            emu.popen(0, ["true"], start_new_session=False)


def test_ssh_runs_in_the_host_with_its_dev_shm():
    with EmulatedHosts(2, sshd=True) as emu:
        emu.run(0, ["sh", "-c", "echo from-host0 > /dev/shm/marker"], timeout=10, check=True)
        check = "hostname -I; cat /dev/shm/marker 2>/dev/null || echo no-marker; echo $PATH"
        on0 = _ssh(emu, 0, check)
        assert on0.returncode == 0, on0.stderr
        address, marker, path = on0.stdout.split("\n")[:3]
        assert address.split() == [emu.hosts[0].address]
        assert marker == "from-host0"
        assert "/usr/bin" in path.split(":")
        on1 = _ssh(emu, 1, check)
        assert on1.returncode == 0, on1.stderr
        assert on1.stdout.split("\n")[:2] == [emu.hosts[1].address + " ", "no-marker"]


def test_ssh_runs_the_venv_python_without_forwarded_environment():
    with EmulatedHosts(1, sshd=True) as emu:
        script = "import os, distgnn; print(os.environ.get('DISTGNN_SECRET', 'unset'))"
        env = dict(os.environ, DISTGNN_SECRET="leaked", LC_DISTGNN="leaked")
        argv = ["ssh", *emu.ssh_options(), f"root@{emu.hosts[0].address}", shlex.join([PY, "-c", script])]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "unset\n"


def test_ssh_to_host_missing_from_known_hosts_fails(tmp_path):
    with EmulatedHosts(2, sshd=True) as emu:
        lines = emu.known_hosts.read_text().splitlines()
        assert [line.split()[0] for line in lines] == [h.address for h in emu.hosts]
        only_host0 = tmp_path / "known_hosts"
        only_host0.write_text(lines[0] + "\n")
        options = [o.replace(str(emu.known_hosts), str(only_host0)) for o in emu.ssh_options()]
        assert _ssh(emu, 0, "true", options).returncode == 0
        refused = _ssh(emu, 1, "true", options)
        assert refused.returncode == 255
        assert "Host key verification failed" in refused.stderr


def test_ssh_to_host_with_wrong_key_fails(tmp_path):
    with EmulatedHosts(2, sshd=True) as emu:
        host0_key = emu.known_hosts.read_text().splitlines()[0].split(maxsplit=1)[1]
        swapped = tmp_path / "known_hosts"
        swapped.write_text(f"{emu.hosts[1].address} {host0_key}\n")
        options = [o.replace(str(emu.known_hosts), str(swapped)) for o in emu.ssh_options()]
        refused = _ssh(emu, 1, "true", options)
        assert refused.returncode == 255
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr


def test_ssh_options_need_sshd():
    with EmulatedHosts(1) as emu:
        with pytest.raises(EmulationError, match="sshd=True"):
            emu.ssh_options()


def test_teardown_leaves_nothing_even_after_an_error():
    with pytest.raises(RuntimeError, match="boom"):
        with EmulatedHosts(2, sshd=True) as emu:
            prefix = emu.prefix
            emu.popen(0, ["sleep", "300"])
            # Leaves its session and process group: only the namespace sweep finds it.
            emu.popen(1, ["setsid", "-f", "sleep", "301"])
            _ssh(emu, 0, "true")
            sshd_pids = [p.pid for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "sshd"
                         and prefix in " ".join(p.info["cmdline"] or [])]
            assert len(sshd_pids) == 2
            assert _leftovers(prefix)
            raise RuntimeError("boom")
    assert _leftovers(prefix) == []
    assert not any(psutil.pid_exists(pid) for pid in sshd_pids)
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] in (["sleep", "300"],
                                                                                      ["sleep", "301"])]


def test_prefix_in_use_is_refused_and_left_alone():
    with EmulatedHosts(1) as first:
        with pytest.raises(EmulationError, match="in use"):
            with EmulatedHosts(1, prefix=first.prefix):
                pass
        # The refused run must not have torn down the first one.
        assert first.run(0, ["true"], timeout=10).returncode == 0
        assert _leftovers(first.prefix)


def test_bad_arguments():
    with pytest.raises(ValueError, match="1..200"):
        EmulatedHosts(0)
    with pytest.raises(ValueError, match="prefix"):
        EmulatedHosts(1, prefix="Bad-Prefix")


def test_cleanup_stale_removes_crashed_runs_only():
    crashed_script = textwrap.dedent("""
        import time
        from distgnn.emulation import EmulatedHosts
        emu = EmulatedHosts(2, sshd=True).__enter__()
        print(emu.prefix, flush=True)
        time.sleep(60)
    """)
    crashed = subprocess.Popen([PY, "-c", crashed_script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        prefix = crashed.stdout.readline().strip()
        assert prefix, crashed.stderr.read()
        with EmulatedHosts(1) as alive:
            # While its owner lives, a run is not stale.
            assert cleanup_stale(prefix) == []
            crashed.send_signal(signal.SIGKILL)
            crashed.wait(timeout=10)
            assert _leftovers(prefix)
            assert prefix in cleanup_stale("dg*")
            assert _leftovers(prefix) == []
            assert alive.run(0, ["true"], timeout=10).returncode == 0
    finally:
        if crashed.poll() is None:
            crashed.kill()
            crashed.wait(timeout=10)
        cleanup_stale(prefix or "none")


def test_setup_and_teardown_are_quick():
    start = time.monotonic()
    with EmulatedHosts(2, sshd=True) as emu:
        ready = time.monotonic()
        assert _ssh(emu, 1, "true").returncode == 0
        closing = time.monotonic()
    end = time.monotonic()
    assert ready - start < 10 and end - closing < 10
