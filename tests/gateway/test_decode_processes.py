"""A gateway's decode processes run below its priority and end with it, even when it is SIGKILLed and cannot
shut its pool down (they used to wait for work forever, orphaned)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from gateway.limits import DECODE_NICENESS

GATEWAY = """
import asyncio, multiprocessing, time
from gateway.limits import Decoder

async def main() -> None:
    decoder = Decoder(inline_bytes=0, processes=2, max_elements=1 << 20)  # every body goes to a decode process
    await decoder.decode(b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1.0]}]}', None)
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    time.sleep(3600)

asyncio.run(main())
"""


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat from the state on (the third field)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def _nice(pid: int) -> int:
    return int(_stat(pid)[16])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone for good, only not yet reaped
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_decode_processes_exit_when_the_gateway_is_killed() -> None:
    gateway = subprocess.Popen([sys.executable, "-c", GATEWAY], stdout=subprocess.PIPE, text=True)
    try:
        assert gateway.stdout is not None
        children = [int(pid) for pid in gateway.stdout.readline().split()]
        assert children, "no decode process was started"
        assert all(_alive(pid) for pid in children)
        assert all(_nice(pid) == _nice(gateway.pid) + DECODE_NICENESS for pid in children)
        assert all(_stat(pid)[38] == str(os.SCHED_IDLE) for pid in children)  # the scheduling policy
        os.kill(gateway.pid, signal.SIGKILL)
        gateway.wait(10)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in children), f"decode processes {children} outlived their gateway"
    finally:
        gateway.kill()
        gateway.wait(10)
