"""A local Ray started by mel.raylocal.init_ray listens on loopback only."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

pytestmark = pytest.mark.integration

psutil = pytest.importorskip("psutil")


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _process_tree() -> dict[int, str]:
    me = psutil.Process(os.getpid())
    procs = {me.pid: me.name()}
    for p in me.children(recursive=True):
        try:
            procs[p.pid] = p.name()
        except psutil.NoSuchProcess:
            pass
    return procs


def bound_sockets(pids: dict[int, str]) -> list[tuple[str, int, str, str]]:
    """(ip, port, kind, process name) of every listening TCP socket and bound UDP socket of ``pids``."""
    out = []
    for c in psutil.net_connections(kind="inet"):
        if c.pid not in pids or not c.laddr:
            continue
        if c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN:
            out.append((c.laddr.ip, c.laddr.port, "tcp", pids[c.pid]))
        elif c.type == socket.SOCK_DGRAM:
            out.append((c.laddr.ip, c.laddr.port, "udp", pids[c.pid]))
    return out


def non_loopback(sockets: list[tuple[str, int, str, str]]) -> list[tuple[str, int, str, str]]:
    return [s for s in sockets if not _is_loopback(s[0])]


def test_checker_catches_wildcard_bind() -> None:
    """The check below must be able to fail: a socket on 0.0.0.0 in this process tree is reported."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        s.listen(1)
        port = s.getsockname()[1]
        bad = non_loopback(bound_sockets(_process_tree()))
        assert any(p == port for _, p, _, _ in bad), bad


def test_local_ray_listens_on_loopback_only(ray_local: None) -> None:
    import ray

    assert ray.is_initialized()
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")

    @ray.remote
    def ping() -> int:  # start a worker too, so its sockets are checked
        return os.getpid()

    ray.get([ping.remote() for _ in range(2)])
    procs = _process_tree()
    sockets = bound_sockets(procs)
    names = {name for *_, name in sockets}
    assert {"gcs_server", "raylet"} <= names, f"Ray's services were not found among {sorted(names)}"
    assert non_loopback(sockets) == [], f"Ray sockets not on loopback: {non_loopback(sockets)}"
