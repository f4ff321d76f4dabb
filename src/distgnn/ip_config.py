"""DGL's ip_config.txt: one host per line, `address [port]`, which distgnn widens with an
optional per-host trainer count: `address [port] [gpus=N | trainers=N]`.

This module is the only owner of the format. Parsing and formatting are pure;
name resolution and the local-address lookup are kept in their own functions
because they touch the system.

Accepted input is a little wider than what DGL 2.1 itself reads: blank lines and
`#` comments are allowed here, a host may be given by name, and a line may say how many
trainers its host runs (`gpus=N`: one per GPU; `trainers=N`: CPU trainers), for hosts
that differ. DGL's own reader
breaks on both (a blank line aborts its parse, and a client finds its machine id
by comparing the file's addresses with its NICs' IPv4 addresses), so the file
handed to DGL must be the output of `format_ip_config(resolve_entries(...))`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, replace
from pathlib import Path

from distgnn.errors import InputError
from distgnn.ports import DEFAULT_SERVER_PORT

_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_LOCAL_NAMES = frozenset({"127.0.0.1", "localhost"})


@dataclass(frozen=True)
class HostEntry:
    """One host of an ip_config file."""

    address: str
    """IPv4 address or host name, as written in the file."""
    port: int = DEFAULT_SERVER_PORT
    """Port of the host's first graph server (server k listens on port + k)."""
    line: int = 0
    """1-based line number in the source file, 0 when not read from a file."""
    node: str | None = None
    """Slurm's node name when the host came from an allocation instead of a file."""
    gpus: int | None = None
    """`gpus=N`: this host trains with N GPUs, one trainer each (None: launch's --gpus-per-host)."""
    trainers: int | None = None
    """`trainers=N`: this host runs N CPU trainers (None: launch's --trainers-per-host)."""

    def where(self, source: str) -> str:
        """Where the host was named, for messages: `FILE line N` or `Slurm node NAME`."""
        return f"Slurm node {self.node}" if self.node else f"{source} line {self.line}"


def parse_ip_config(path: str | Path) -> list[HostEntry]:
    """Read and validate an ip_config file; raise InputError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: ip_config file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: ip_config path is a directory, expected a file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: ip_config file is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ip_config file ({exc.strerror})") from None
    return parse_ip_config_text(text, str(path))


def parse_ip_config_text(text: str, source: str) -> list[HostEntry]:
    """Parse ip_config text; `source` names the file in error messages."""
    entries: list[HostEntry] = []
    first_seen: dict[tuple[str, int], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        entry = _parse_line(raw, source, number)
        if entry is None:
            continue
        key = (entry.address.lower(), entry.port)
        if key in first_seen:
            raise InputError(
                f"{source}:{number}: duplicate host {entry.address} port {entry.port} "
                f"(first on line {first_seen[key]})"
            )
        first_seen[key] = number
        entries.append(entry)
    if not entries:
        raise InputError(f"{source}: no host listed (expected lines of 'address [port]')")
    return entries


def _parse_line(raw: str, source: str, number: int) -> HostEntry | None:
    content = raw.split("#", 1)[0]
    fields = content.split()
    if not fields:
        return None
    where = f"{source}:{number}"
    address, rest = fields[0], fields[1:]
    _check_address(address, where)
    port = DEFAULT_SERVER_PORT
    if rest and "=" not in rest[0]:
        port = _parse_port(rest.pop(0), where)
    counts = dict(_parse_count(field, where) for field in rest)
    if len(counts) != len(rest) or len(counts) > 1:
        raise InputError(f"{where}: give one of gpus=N or trainers=N, once")
    return HostEntry(address, port, number, gpus=counts.get("gpus"), trainers=counts.get("trainers"))


def _parse_count(field: str, where: str) -> tuple[str, int]:
    key, sep, value = field.partition("=")
    if not sep or key not in ("gpus", "trainers"):
        raise InputError(f"{where}: unexpected {field!r} (expected 'address [port] [gpus=N | trainers=N]')")
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"{where}: {key}={value}: expected a whole number of at least 1")
    return key, int(value)


def _check_address(address: str, where: str) -> None:
    if ":" in address:
        raise InputError(f"{where}: address {address!r} is not IPv4 or a host name (DGL 2.1 supports IPv4 only)")
    labels = address.rstrip(".").split(".")
    # A name made only of digits and dots is meant as an IPv4 address; judge it as one
    # so '10.0.0.256' is reported as a bad address, not accepted as a host name.
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise InputError(f"{where}: address {address!r} is not a valid IPv4 address") from None
        return
    if len(address) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise InputError(f"{where}: address {address!r} is not a valid IPv4 address or host name")


def _parse_port(text: str, where: str) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise InputError(f"{where}: port {text!r} is not an integer") from None
    if not 1 <= port <= 65535:
        raise InputError(f"{where}: port {port} is out of range 1-65535")
    return port


def check_server_ports(entries: list[HostEntry], servers_per_host: int, source: str) -> None:
    """Check that every host's server ports port..port+S-1 fit and do not overlap.

    DGL gives graph server k of a host the port `port + k`, so two lines for the same
    address whose ranges overlap would make two servers bind the same port.
    """
    if servers_per_host < 1:
        raise InputError(f"servers per host must be >= 1, got {servers_per_host}")
    claimed: dict[tuple[str, int], HostEntry] = {}
    for entry in entries:
        last = entry.port + servers_per_host - 1
        if last > 65535:
            raise InputError(
                f"{source}:{entry.line}: port {entry.port} leaves no room for {servers_per_host} "
                f"servers (last port {last} > 65535)"
            )
        for port in range(entry.port, last + 1):
            other = claimed.setdefault((entry.address.lower(), port), entry)
            if other is not entry:
                raise InputError(
                    f"{source}:{entry.line}: server port {port} of {entry.address} is also used by "
                    f"line {other.line} with {servers_per_host} servers per host"
                )


def format_ip_config(entries: list[HostEntry]) -> str:
    """The text DGL reads: `address port` per line, no comments, no blank lines."""
    return "".join(f"{entry.address} {entry.port}\n" for entry in entries)


def resolve_entries(entries: list[HostEntry], source: str) -> list[HostEntry]:
    """Replace host names by their IPv4 address (DGL matches NIC addresses, not names)."""
    return [_resolve(entry, source) for entry in entries]


def is_ipv4(address: str) -> bool:
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return True


def _resolve(entry: HostEntry, source: str) -> HostEntry:
    if is_ipv4(entry.address):
        return entry
    try:
        infos = socket.getaddrinfo(entry.address, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        where = f"Slurm node {entry.node}" if entry.node else f"{source}:{entry.line}"
        raise InputError(f"{where}: cannot resolve host {entry.address!r} ({exc.strerror})") from None
    return replace(entry, address=str(infos[0][4][0]))


def local_addresses() -> set[str]:
    """Addresses and names under which this machine (this network namespace) is itself."""
    import psutil  # only the launcher needs it; keep parsing importable without it

    found = set(_LOCAL_NAMES)
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family == socket.AF_INET:
                found.add(addr.address)
    return found


def is_local(entry: HostEntry, local: set[str]) -> bool:
    """Whether an entry names this machine, given `local_addresses()`."""
    try:
        if ipaddress.IPv4Address(entry.address).is_loopback:
            return True
    except ValueError:
        pass
    return entry.address.lower() in {name.lower() for name in local}


def dgl_readable(path: str | Path) -> Path:
    """A file DGL 2.1 can read for the host list in `path`: the file itself when it already
    is one, otherwise a normalised copy (names resolved, no comments or blank lines).

    The copy's name is derived from its content, so a graph server and its trainers, each
    normalising the same user file, hand DGL identical files without coordinating.
    """
    import hashlib
    import tempfile

    from distgnn.atomic import atomic_write_text

    path = Path(path)
    entries = parse_ip_config(path)
    text = format_ip_config(resolve_entries(entries, str(path)))
    if path.read_text(encoding="utf-8") == text:
        return path
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"distgnn-ip_config-{digest}.txt"
    if not target.exists():
        atomic_write_text(target, text)
    return target
