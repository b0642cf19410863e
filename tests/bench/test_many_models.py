"""bench/many_models.py's pure parts: the /proc readers (against this process and real local sockets), the
targets' PASS/FAIL rows and the small parsers. The benchmark itself runs the whole fleet (not a test)."""

from __future__ import annotations

import argparse
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from bench import procfs
from bench.many_models import TARGETS, env_arg, quantile, verdicts


@pytest.fixture
def connection() -> Iterator[tuple[int, socket.socket]]:
    """A listening port on 127.0.0.1 and one established client connection to it, both in this process."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    try:
        yield port, client
    finally:
        for sock in (client, accepted, server):
            sock.close()


def test_procfs_reads_this_process() -> None:
    spun = sum(i * i for i in range(200_000))  # some CPU time of our own
    assert spun > 0
    assert procfs.cpu_seconds(os.getpid()) > 0
    stats = procfs.status(os.getpid())
    assert stats["rss_bytes"] > 1 << 20
    before = stats["threads"]
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert procfs.status(os.getpid())["threads"] == before + 1
    finally:
        stop.set()
        thread.join()
    busy, total = procfs.machine_jiffies()
    assert 0 <= busy <= total


def test_procfs_gone_process_reads_zero() -> None:
    gone = 2**22 + 12345  # above the default pid_max of 4194304
    assert procfs.cpu_seconds(gone) == 0.0
    assert procfs.status(gone) == {"rss_bytes": 0, "threads": 0}
    assert procfs.socket_inodes(gone) == set()


def test_procfs_descendants_maps_children_to_their_root() -> None:
    found = procfs.descendants([os.getpid()])
    assert found[os.getpid()] == os.getpid()
    assert procfs.descendants([]) == {}


def test_connections_and_client_ports_find_the_owner(connection: tuple[int, socket.socket]) -> None:
    port, client = connection
    # One established connection from us to the port (the accepted end has the port as its *local* port).
    assert procfs.connections_to([os.getpid()], port) == 1
    assert procfs.connections_to([], port) == 0
    owners = procfs.client_ports({os.getpid(): "bench"}, port)
    assert owners == {client.getsockname()[1]: "bench"}


def test_quantile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert quantile(values, 0.5) == 50.0
    assert quantile(values, 0.99) == 99.0
    assert quantile([7.0], 0.99) == 7.0
    assert quantile([], 0.5) is None


def test_env_arg() -> None:
    assert env_arg("FLEET_WORKER_MODE=pool") == ("FLEET_WORKER_MODE", "pool")
    assert env_arg("FLEET_X=a=b") == ("FLEET_X", "a=b")
    for bad in ("FLEET_WORKER_MODE", "PATH=/bin"):
        with pytest.raises(argparse.ArgumentTypeError):
            env_arg(bad)


def _report(**parts: object) -> dict[str, object]:
    return {"models": 1000, "workers": 2, **parts}


def test_verdicts_pass_and_fail_at_the_targets() -> None:
    passing = _report(
        register={"seconds": 59.0, "ms_per_model": 59.0, "projected_1000_s": 59.0},
        idle={"fleet_cpu_pct": 20.0, "redis_cmds_per_s": 100.0},
        first={"models": 500, "answered": 500, "all_answered_s": 60.0, "timeout_s": 120.0},
        workers_after_start={"shape": {"w1": {"rss_mb": 600.0}}, "resident_models": {"w1": 50}},
        skew={"errors": 0, "answered": 10, "hot_p99_ms": 100.0, "hit_rate": 0.95},
        change={
            "before_p99_ms": 10.0,
            "add": {"added_ms": 250.0, "max_ms": 260.0},
            "move": {"added_ms": 250.0, "max_ms": 260.0},
        },
    )
    rows = {figure: verdict for figure, _, _, verdict in verdicts(passing)}
    assert rows == {
        "registration": "PASS",
        "idle CPU, whole fleet": "PASS",
        "idle Redis commands/s": "PASS",
        "every model answering": "PASS",
        "worker RSS (largest)": "PASS",
        "skew: errors": "PASS",
        "skew: hot p99": "PASS",
        "skew: hit rate": "PASS",
        "model added under load": "PASS",
        "model moved under load": "PASS",
        "worker added under load": "—",
    }
    failing = _report(
        register={"seconds": 61.0, "ms_per_model": 61.0, "projected_1000_s": 61.0},
        idle={"fleet_cpu_pct": 20.1, "redis_cmds_per_s": 100.1},
        first={"models": 500, "answered": 499, "all_answered_s": None, "timeout_s": 120.0},
        workers_after_start={"shape": {"w1": {"rss_mb": 600.1}}, "resident_models": {"w1": 50}},
        skew={"errors": 1, "answered": 10, "hot_p99_ms": 100.1, "hit_rate": 0.949},
        change={
            "before_p99_ms": 10.0,
            "move": {"added_ms": 250.1, "max_ms": 260.1},
            "remove": {"added_ms": 250.1, "max_ms": 260.1},
        },
    )
    rows = {figure: verdict for figure, _, _, verdict in verdicts(failing)}
    assert all(v == "FAIL" for k, v in rows.items() if "worker added" not in k), rows
    assert "model removed under load" in rows and "model moved under load" in rows
    # A change phase on one worker moves nothing: that row says so.
    # Each change is shown beside the same figure for a window with no change (noise alone).
    with_control = _report(
        change={"before_p99_ms": 10.0, "none": {"added_ms": 5.0}, "move": {"added_ms": 20.0, "max_ms": 30.0}}
    )
    shown = {figure: value for figure, value, _, _ in verdicts(with_control)}
    assert shown["model moved under load"] == "+20.0 ms (max 30.0 vs p99 10.0 before; +5.0 ms with no change)"
    one_worker = verdicts(_report(change={"before_p99_ms": 10.0, "add": {"added_ms": 1.0, "max_ms": 11.0}}))
    assert ("model moved under load", "not measured (one worker)", TARGETS["change_under_load_ms"], "—") in one_worker
    # A phase that did not run has no row; the unmeasured targets are listed as such.
    assert [r[0] for r in verdicts(_report())] == ["model added/moved/removed under load", "worker added under load"]
