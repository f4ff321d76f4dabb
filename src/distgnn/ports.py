"""Where each process of a run listens, derived from a few base ports.

One function per derived port so the launcher's plan, the processes themselves
and the Prometheus targets file can never disagree.
"""

from __future__ import annotations

DEFAULT_SERVER_PORT = 30050
"""DGL's default graph-server port when an ip_config line gives none."""

DEFAULT_METRICS_PORT = 9400
"""Base of the per-process /metrics ports (0 disables metrics)."""

DEFAULT_MASTER_PORT = 29500
"""torch.distributed rendezvous port on the first host."""


def metrics_port(base: int, role: str, local_index: int = 0, servers_per_host: int = 1) -> int:
    """The /metrics port of one process on a host, or 0 when metrics are off.

    Layout per host: launcher at `base`, graph server k at `base + 1 + k`, trainer with
    local rank r at `base + 1 + servers_per_host + r`.
    """
    if base == 0:
        return 0
    if role == "launcher":
        return base
    if role == "server":
        return base + 1 + local_index
    if role == "trainer":
        return base + 1 + servers_per_host + local_index
    raise ValueError(f"unknown role {role!r}; expected launcher, server or trainer")
