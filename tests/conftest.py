"""Fixtures shared by the multi-host tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def emu():
    """Two emulated hosts (own network namespace, address and /dev/shm) with a real sshd each."""
    from distgnn.emulation import EmulatedHosts

    if os.geteuid() != 0:
        pytest.fail("the multi-host tests need root (network namespaces, sshd); CI runs as root")
    with EmulatedHosts(2, sshd=True) as hosts:
        yield hosts
