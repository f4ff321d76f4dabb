"""Fixtures shared by the multi-host tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture()
def one_torch_thread():
    """Tiny models on a shared 2-core machine: intra-op threads only spin against each other
    (a step goes from ~7 ms to ~130 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def emu():
    """Two emulated hosts (own network namespace, address and /dev/shm) with a real sshd each."""
    from distgnn.emulation import EmulatedHosts

    if os.geteuid() != 0:
        pytest.fail("the multi-host tests need root (network namespaces, sshd); CI runs as root")
    with EmulatedHosts(2, sshd=True) as hosts:
        yield hosts
