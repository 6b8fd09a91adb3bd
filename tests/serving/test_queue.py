"""The generation queue on its own: FIFO, one at a time, cancel while waiting and while running.

The ImageService is replaced by a stand-in whose run() takes steps and honours should_stop exactly as
the real one does (tests/server/test_server.py runs the real one through Cog).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from model.contract.errors import InputError
from model.contract.request import Request
from model.serving.queue import PredictionQueue
from model.serving.service import Canceled


class SteppingGenerator:
    """validate() and run() with the real signatures; run() takes `steps` steps of `step_s`."""

    def __init__(self, steps: int = 5, step_s: float = 0.05) -> None:
        self.steps, self.step_s = steps, step_s
        self.events: list[tuple[str, str]] = []
        self.running = 0
        self.max_running = 0
        self.lock = threading.Lock()
        self.idle_warmup: list = []  # the server's idle warm-up: tests/serving/test_warmup.py

    def validate(self, request: Request, should_stop: Callable[[], bool] | None = None) -> Request:
        if not request.prompt.strip():
            raise InputError("prompt", "must not be blank")
        return request

    def run(self, valid: Request, should_stop) -> Path:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.events.append(("start", valid.prompt))
        try:
            for done in range(1, self.steps + 1):
                time.sleep(self.step_s)
                if should_stop():
                    self.events.append(("stopped", valid.prompt))
                    raise Canceled(f"canceled after {done} steps")
            self.events.append(("end", valid.prompt))
            return Path(f"/out/{valid.prompt}.png")
        finally:
            with self.lock:
                self.running -= 1


def request(prompt: str) -> Request:
    return Request(prompt=prompt, resolution="720p", aspect_ratio="1:1")


def test_one_at_a_time_in_order_of_arrival() -> None:
    gen = SteppingGenerator()
    queue = PredictionQueue(gen)  # type: ignore[arg-type]

    async def main() -> list[Path]:
        tasks = []
        for name in ("a", "b", "c", "d"):
            tasks.append(asyncio.create_task(queue.predict(request(name))))
            await asyncio.sleep(0)  # arrival order a, b, c, d
        return await asyncio.gather(*tasks)

    outputs = asyncio.run(main())
    assert outputs == [Path(f"/out/{n}.png") for n in "abcd"]
    assert gen.max_running == 1
    assert [p for kind, p in gen.events if kind == "start"] == list("abcd")


def test_bad_input_fails_at_once_without_waiting_for_the_gpu() -> None:
    gen = SteppingGenerator(steps=20)
    queue = PredictionQueue(gen)  # type: ignore[arg-type]

    async def main() -> float:
        busy = asyncio.create_task(queue.predict(request("long")))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(InputError, match="prompt"):
            await queue.predict(request("   "))
        waited = time.monotonic() - started
        await busy
        return waited

    assert asyncio.run(main()) < 0.5  # the long one takes 1 s
    assert ("end", "long") in gen.events


def test_cancel_while_waiting_leaves_the_line_and_the_rest_go_on() -> None:
    gen = SteppingGenerator()
    queue = PredictionQueue(gen)  # type: ignore[arg-type]

    async def main() -> list[object]:
        tasks = [asyncio.create_task(queue.predict(request(n))) for n in ("a", "b", "c")]
        await asyncio.sleep(0.05)  # a is running, b and c wait
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    a, b, c = asyncio.run(main())
    assert a == Path("/out/a.png") and c == Path("/out/c.png")
    assert isinstance(b, asyncio.CancelledError)
    assert ("start", "b") not in gen.events


def test_cancel_while_running_stops_within_one_step_and_frees_the_gpu() -> None:
    gen = SteppingGenerator(steps=40, step_s=0.05)
    queue = PredictionQueue(gen)  # type: ignore[arg-type]

    async def main() -> tuple[object, Path, float]:
        first = asyncio.create_task(queue.predict(request("first")))
        second = asyncio.create_task(queue.predict(request("second")))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        first.cancel()
        result = await asyncio.gather(first, return_exceptions=True)
        stopped_in = time.monotonic() - started
        return result[0], await second, stopped_in

    first, second, stopped_in = asyncio.run(main())
    assert isinstance(first, asyncio.CancelledError)
    assert stopped_in < 0.05 * 3  # within one step (plus scheduling)
    assert ("stopped", "first") in gen.events and ("end", "first") not in gen.events
    assert second == Path("/out/second.png")
    # The second started only after the first had stopped: never two on the GPU.
    assert gen.events.index(("stopped", "first")) < gen.events.index(("start", "second"))
    assert gen.max_running == 1


def test_an_error_without_a_message_says_what_failed() -> None:
    """coglet's error is the exception's text: one without any (a library's bare assert) is
    replaced by its type and where it was raised, never an empty error."""

    class Asserting(SteppingGenerator):
        def run(self, valid: Request, should_stop) -> Path:
            raise AssertionError  # what a library's bare `assert` raises (pytest rewrites ours)

    queue = PredictionQueue(Asserting())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"^AssertionError \(with no message\) at test_queue.py:\d+ in run$"):
        asyncio.run(queue.predict(request("a")))
    assert queue.in_flight == 0
    # An error with its own text passes unchanged.
    with pytest.raises(InputError, match="must not be blank"):
        asyncio.run(queue.predict(request(" ")))
