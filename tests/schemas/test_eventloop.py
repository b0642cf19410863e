"""The event loop helpers every entry point uses."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal

import pytest

from schemas import eventloop


async def test_stop_signals_turn_sigterm_into_a_callback() -> None:
    called = asyncio.Event()
    with eventloop.stop_signals(called.set):
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(called.wait(), 5.0)
    # The handlers are gone afterwards: the loop no longer lists them.
    loop = asyncio.get_running_loop()
    assert loop.remove_signal_handler(signal.SIGTERM) is False
    assert loop.remove_signal_handler(signal.SIGINT) is False


def test_loop_factory_honours_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_EVENT_LOOP", "asyncio")
    assert eventloop.loop_factory() is None
    monkeypatch.setenv("FLEET_EVENT_LOOP", "auto")
    uvloop_installed = importlib.util.find_spec("uvloop") is not None
    assert (eventloop.loop_factory() is not None) is uvloop_installed


async def test_async_service_starts_on_enter_and_stops_on_exit_even_after_an_error() -> None:
    calls: list[str] = []

    class Service(eventloop.AsyncService):
        async def start(self) -> None:
            calls.append("start")

        async def stop(self) -> None:
            calls.append("stop")

    service = Service()
    with pytest.raises(RuntimeError, match="boom"):
        async with service as entered:
            assert entered is service and calls == ["start"]
            raise RuntimeError("boom")
    assert calls == ["start", "stop"]
