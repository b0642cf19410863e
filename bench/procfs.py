"""What a benchmark reads about processes on this machine from Linux /proc: CPU seconds, RSS, threads,
descendants, and which process owns a TCP connection (to split broker connections and Redis commands by
service). No psutil needed; every reader returns a neutral value for a process that is gone."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_ESTABLISHED = "01"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (0.0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status(pid: int) -> dict[str, int]:
    """``rss_bytes`` and ``threads`` of ``pid`` from /proc/<pid>/status (zeros when it is gone)."""
    found = {"rss_bytes": 0, "threads": 0}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    found["rss_bytes"] = int(line.split()[1]) * 1024
                elif line.startswith("Threads:"):
                    found["threads"] = int(line.split()[1])
    except OSError:
        pass
    return found


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot (/proc/stat; iowait counts as idle)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])  # guest time is already inside user/nice
    return total - idle, total


def descendants(pids: Iterable[int]) -> dict[int, int]:
    """Every live process below one of ``pids`` (and the pids themselves), mapped to that root pid."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent[int(entry)] = int(fh.read().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    roots = {pid: pid for pid in pids if pid in parent}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if pid not in roots and ppid in roots:
                roots[pid] = roots[ppid]
                changed = True
    return roots


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets ``pid`` holds open."""
    found: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


@dataclass(frozen=True, slots=True)
class TcpSocket:
    """One established TCP socket of this network namespace."""

    local_port: int
    remote_port: int
    inode: int


def tcp_sockets() -> list[TcpSocket]:
    """Established TCP sockets (IPv4 and IPv6) from /proc/net/tcp[6]."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                lines = fh.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != _ESTABLISHED:
                continue
            local_port = int(cols[1].rpartition(":")[2], 16)
            remote_port = int(cols[2].rpartition(":")[2], 16)
            found.append(TcpSocket(local_port, remote_port, int(cols[9])))
    return found


def connections_to(pids: Iterable[int], port: int, sockets: list[TcpSocket] | None = None) -> int:
    """Established TCP connections that ``pids`` hold to a server listening on ``port`` of this machine."""
    inodes: set[int] = set()
    for pid in pids:
        inodes |= socket_inodes(pid)
    return sum(1 for s in sockets or tcp_sockets() if s.remote_port == port and s.inode in inodes)


def client_ports(owners: dict[int, str], server_port: int) -> dict[int, str]:
    """Local port of each client connection to ``server_port`` mapped to its owner's label (``owners``: pid →
    label), so that a server's per-connection figures (Redis ``CLIENT LIST`` addr) can be split by process."""
    label_of_inode = {inode: label for pid, label in owners.items() for inode in socket_inodes(pid)}
    return {
        s.local_port: label_of_inode[s.inode]
        for s in tcp_sockets()
        if s.remote_port == server_port and s.inode in label_of_inode
    }
