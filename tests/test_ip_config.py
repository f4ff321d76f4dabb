"""ip_config.txt parsing, validation, formatting and the local-host check."""

from __future__ import annotations

import socket

import pytest

from distgnn.errors import InputError
from distgnn.ip_config import (
    HostEntry,
    check_server_ports,
    format_ip_config,
    is_local,
    local_addresses,
    parse_ip_config,
    parse_ip_config_text,
    resolve_entries,
)
from distgnn.ports import DEFAULT_SERVER_PORT


def _error(text: str) -> str:
    with pytest.raises(InputError) as info:
        parse_ip_config_text(text, "ip_config.txt")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_parses_addresses_ports_comments_and_blank_lines():
    text = "# cluster\n\n10.0.0.1 30060\n  10.0.0.2   # second host\nnode-3.example.com 4000\n"
    assert parse_ip_config_text(text, "f") == [
        HostEntry("10.0.0.1", 30060, 3),
        HostEntry("10.0.0.2", DEFAULT_SERVER_PORT, 4),
        HostEntry("node-3.example.com", 4000, 5),
    ]


def test_same_address_with_other_port_is_allowed():
    entries = parse_ip_config_text("10.0.0.1 30050\n10.0.0.1 30060\n", "f")
    assert [e.port for e in entries] == [30050, 30060]


def test_parse_file_reads_path(tmp_path):
    path = tmp_path / "ip_config.txt"
    path.write_text("127.0.0.1 30050\n")
    assert parse_ip_config(path) == [HostEntry("127.0.0.1", 30050, 1)]


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(InputError, match=r"nope\.txt: ip_config file not found"):
        parse_ip_config(path)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        parse_ip_config(tmp_path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "ip.txt"
    path.write_bytes(b"10.0.0.1 \xff\xfe\n")
    with pytest.raises(InputError, match=r"ip\.txt: ip_config file is not UTF-8"):
        parse_ip_config(path)


def test_error_from_file_names_path_and_line(tmp_path):
    path = tmp_path / "ip_config.txt"
    path.write_text("10.0.0.1\n\n10.0.0.2 abc\n")
    with pytest.raises(InputError) as info:
        parse_ip_config(path)
    assert str(info.value) == f"{path}:3: port 'abc' is not an integer"


def test_empty_file():
    assert _error("") == "ip_config.txt: no host listed (expected lines of 'address [port]')"


def test_only_comments_is_empty():
    assert "no host listed" in _error("# nothing here\n\n   \n")


def test_port_not_integer():
    assert _error("10.0.0.1\n\n10.0.0.2 abc\n") == "ip_config.txt:3: port 'abc' is not an integer"


def test_port_float_is_not_integer():
    assert _error("10.0.0.1 300.5\n") == "ip_config.txt:1: port '300.5' is not an integer"


@pytest.mark.parametrize("port", ["0", "-1", "65536"])
def test_port_out_of_range(port):
    assert _error(f"10.0.0.1 {port}\n") == f"ip_config.txt:1: port {int(port)} is out of range 1-65535"


def test_port_bounds_accepted():
    entries = parse_ip_config_text("10.0.0.1 1\n10.0.0.1 65535\n", "f")
    assert [e.port for e in entries] == [1, 65535]


def test_too_many_fields():
    # DGL 2.0's third column (server count) is gone in 2.1: reject it rather than guess.
    assert _error("10.0.0.1 30050 2\n") == (
        "ip_config.txt:1: unexpected '2' (expected 'address [port] [gpus=N | trainers=N]')")


def test_per_host_trainer_counts():
    entries = parse_ip_config_text("10.0.0.1 30050 gpus=4\n10.0.0.2 gpus=2  # smaller box\n10.0.0.3 trainers=3\n"
                                   "10.0.0.4\n", "f")
    assert [(e.port, e.gpus, e.trainers) for e in entries] == [
        (30050, 4, None), (DEFAULT_SERVER_PORT, 2, None), (DEFAULT_SERVER_PORT, None, 3), (DEFAULT_SERVER_PORT, None, None)]
    # what DGL reads keeps its own two columns
    assert format_ip_config(entries).splitlines()[0] == "10.0.0.1 30050"


@pytest.mark.parametrize("line, message", [
    ("10.0.0.1 gpus=0", "ip_config.txt:1: gpus=0: expected a whole number of at least 1"),
    ("10.0.0.1 trainers=x", "ip_config.txt:1: trainers=x: expected a whole number of at least 1"),
    ("10.0.0.1 cpus=2", "ip_config.txt:1: unexpected 'cpus=2' (expected 'address [port] [gpus=N | trainers=N]')"),
    ("10.0.0.1 gpus=2 trainers=2", "ip_config.txt:1: give one of gpus=N or trainers=N, once"),
    ("10.0.0.1 gpus=2 gpus=2", "ip_config.txt:1: give one of gpus=N or trainers=N, once"),
])
def test_bad_trainer_counts(line, message):
    assert _error(line + "\n") == message


def test_duplicate_host_and_port():
    message = _error("10.0.0.1\n10.0.0.2\n10.0.0.1 30050\n")
    assert message == "ip_config.txt:3: duplicate host 10.0.0.1 port 30050 (first on line 1)"


def test_duplicate_host_name_ignores_case():
    assert "duplicate host" in _error("Node1 30050\nnode1 30050\n")


@pytest.mark.parametrize("address", ["10.0.0.256", "10.0.0", "1.2.3.4.5", "010.0.0.1"])
def test_bad_ipv4_address(address):
    assert _error(f"{address} 30050\n") == f"ip_config.txt:1: address {address!r} is not a valid IPv4 address"


@pytest.mark.parametrize("address", ["host_1", "-node", "node-", "a..b", "nö.example", "x" * 64])
def test_bad_host_name(address):
    assert _error(f"{address}\n") == (
        f"ip_config.txt:1: address {address!r} is not a valid IPv4 address or host name"
    )


def test_ipv6_rejected():
    assert "DGL 2.1 supports IPv4 only" in _error("::1 30050\n")


def test_format_round_trips():
    entries = [HostEntry("10.0.0.1", 30050, 1), HostEntry("node-2", 30060, 2), HostEntry("10.0.0.3", 1, 3)]
    text = format_ip_config(entries)
    assert text == "10.0.0.1 30050\nnode-2 30060\n10.0.0.3 1\n"
    assert parse_ip_config_text(text, "f") == entries


def test_format_drops_comments_and_renumbers(tmp_path):
    path = tmp_path / "ip_config.txt"
    path.write_text("# two hosts\n10.0.0.1  # first\n\n10.0.0.2 31000\n")
    written = format_ip_config(parse_ip_config(path))
    assert written == "10.0.0.1 30050\n10.0.0.2 31000\n"
    assert format_ip_config(parse_ip_config_text(written, "again")) == written


def test_check_server_ports_accepts_disjoint_ranges():
    entries = parse_ip_config_text("10.0.0.1 30050\n10.0.0.1 30052\n10.0.0.2 30050\n", "f")
    check_server_ports(entries, 2, "f")


def test_check_server_ports_rejects_overlap():
    entries = parse_ip_config_text("10.0.0.1 30050\n10.0.0.1 30051\n", "f")
    with pytest.raises(InputError) as info:
        check_server_ports(entries, 2, "f")
    assert str(info.value) == (
        "f:2: server port 30051 of 10.0.0.1 is also used by line 1 with 2 servers per host"
    )


def test_check_server_ports_rejects_overflow():
    entries = parse_ip_config_text("10.0.0.1 65535\n", "f")
    with pytest.raises(InputError, match=r"f:1: port 65535 leaves no room for 2 servers"):
        check_server_ports(entries, 2, "f")


def test_check_server_ports_rejects_zero_servers():
    with pytest.raises(InputError, match="servers per host must be >= 1"):
        check_server_ports([HostEntry("10.0.0.1")], 0, "f")


def test_resolve_keeps_ipv4_and_resolves_names():
    entries = [HostEntry("10.0.0.1", 30050, 1), HostEntry("localhost", 30060, 2)]
    resolved = resolve_entries(entries, "f")
    assert resolved[0] == entries[0]
    assert resolved[1].port == 30060 and resolved[1].line == 2
    assert resolved[1].address.startswith("127.")


def test_resolve_unknown_name_is_input_error():
    # .invalid is reserved (RFC 2606): it never resolves.
    with pytest.raises(InputError, match=r"f:4: cannot resolve host 'nohost\.invalid'"):
        resolve_entries([HostEntry("nohost.invalid", 30050, 4)], "f")


def test_local_addresses_include_loopback_and_nics():
    local = local_addresses()
    assert {"127.0.0.1", "localhost"} <= local
    assert all(isinstance(a, str) for a in local)
    nic = [a for a in local if a not in ("127.0.0.1", "localhost")]
    # Every reported address must be bindable here, i.e. really ours.
    for address in nic:
        with socket.socket() as sock:
            sock.bind((address, 0))


def test_is_local():
    local = {"127.0.0.1", "localhost", "10.1.2.3"}
    assert is_local(HostEntry("10.1.2.3"), local)
    assert is_local(HostEntry("LOCALHOST"), local)
    assert is_local(HostEntry("127.0.0.2"), local)
    assert not is_local(HostEntry("10.1.2.4"), local)
    assert not is_local(HostEntry("other-host"), local)
