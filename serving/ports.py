"""Ports for local servers: free ones for throwaway servers and replicas, and a check that a
server's ports are not taken (serving/triton.py re-exports these names; this module sits below it
and knows nothing of its options)."""

from __future__ import annotations

import socket

from serving import ServingError


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports: all sockets stay bound until all are chosen."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port_block(size: int, host: str = "127.0.0.1") -> int:
    """The first of `size` consecutive free ports (for replicas: every port + 3k)."""
    for _ in range(200):
        (base,) = free_ports(1, host)
        if base + size < 65536 and all(port_free(host, base + k) for k in range(size)):
            return base
    raise ServingError(f"no {size} consecutive free ports on {host}")


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(opts) -> None:
    """`opts` (serving.triton.ServerOptions): its host and three ports must be free."""
    busy = [p for p in (opts.http_port, opts.grpc_port, opts.metrics_port) if not port_free(opts.host, p)]
    if busy:
        raise ServingError(
            f"port(s) {', '.join(map(str, busy))} on {opts.host} already in use; "
            "is a server running? (`python -m serving status`) or pick other ports"
        )
