"""A queue instead of 409s: many requests accepted at once, one generation on the GPU at a time.

Cog admits up to COG_MAX_CONCURRENCY predictions at once (cog.yaml `concurrency.max`) and answers
409 past that: that is the queue's bound. Each admitted prediction is validated at once (bad input
fails without waiting), then waits its turn first in first out, and runs its generation on one
worker thread so that the event loop keeps serving health checks, new requests and cancels.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from model.contract.request import Request
from model.serving.logs import say
from model.serving.service import ImageService
from model.serving.warmup import IdleWarmup, WarmupJob

log = logging.getLogger(__name__)
T = TypeVar("T")


def said_nothing(exc: BaseException) -> str:
    """What failed, for an exception without a message (a library's bare `assert`, a `raise
    KeyError()`): coglet builds the prediction's error from the exception's text, which would
    then say nothing ("...AssertionError: "). Its type and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
    return f"{type(exc).__name__} (with no message){where}"


class PredictionQueue:
    """FIFO access to one ImageService from many concurrent async predictions."""

    def __init__(self, service: ImageService, state_file: Path | None = None) -> None:
        self.service = service
        # Predictions admitted and not finished, published for scripts/drain.py (the pod's
        # preStop hook), which waits for zero before asking Cog to shut down.
        self.in_flight = 0
        self.state_file = state_file
        self._publish()
        # One thread: generations never overlap, and CUDA work stays on one host thread.
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gen4-gpu")
        self._cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gen4-validate")
        self._turn: asyncio.Lock | None = None  # created in the server's event loop
        self.waiting = 0
        # Generations that capture the CUDA graphs of likely shapes while no prediction is in
        # flight; a prediction's arrival stops them within one step (model/serving/warmup.py).
        self.warmup = IdleWarmup(
            service.idle_warmup, self._warm, self._gpu, busy=lambda: self.in_flight > 0, report=say
        )
        if service.idle_warmup:
            entries = sorted({f"{job.plan.target[0]}x{job.plan.target[1]}" for job in service.idle_warmup})
            say(
                f"Warming up {', '.join(entries)} with 0 to {max(j.references for j in service.idle_warmup)} "
                f"references while idle, from now on ({len(service.idle_warmup)} generations)"
            )
        self.warmup.poke()

    def problem(self) -> str | None:
        """What would fail every prediction now (no room for outputs), or None: Cog's health check."""
        return self.service.output.problem()

    def _warm(self, job: WarmupJob, stop: Callable[[], bool]) -> bool:
        return self.service.warm_up([job], self.service.idle_warmup_steps, stop) == 1

    async def _in_thread(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
        # A copy of the context: Cog routes each prediction's log lines by a ContextVar.
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(pool, context.run, fn, *args)

    def _publish(self) -> None:
        if self.state_file is None:
            return
        tmp = self.state_file.with_suffix(".tmp")
        state = {"in_flight": self.in_flight, "pid": os.getpid(), "time": time.time(), **self.service.stats()}
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)  # atomic: a reader never sees half a file

    async def predict(self, request: Request) -> Path:
        """Validate, wait for the GPU (FIFO), generate. Cancel works while waiting (the request
        leaves the queue) and while generating (it stops within one denoising step)."""
        self.in_flight += 1
        self._publish()
        try:
            return await self._predict(request)
        except Exception as exc:
            if str(exc).strip():
                raise
            raise RuntimeError(said_nothing(exc)) from exc
        finally:
            self.in_flight -= 1
            self._publish()
            self.warmup.poke()  # idle again: the warm-up goes on where it stopped

    async def _predict(self, request: Request) -> Path:
        if self._turn is None:
            self._turn = asyncio.Lock()  # asyncio.Lock wakes its waiters first in, first out
        # Stages 1 and 2 (model/serving/service.py): take a place in line on arrival, then validate
        # while waiting: a bad request fails at once, and the order is the order of arrival,
        # however long each validation takes.
        ahead = self.waiting + (1 if self._turn.locked() else 0)
        self.waiting += 1
        turn = asyncio.ensure_future(self._turn.acquire())
        leaving = threading.Event()  # a cancel stops the references' downloads at once
        try:
            valid = await self._in_thread(self._cpu, self.service.validate, request, leaving.is_set)
            if ahead:
                say(f"Waiting for the GPU: {ahead} prediction(s) ahead")
            await asyncio.shield(turn)
        except BaseException:
            leaving.set()
            await self._leave(turn)
            raise
        finally:
            self.waiting -= 1
        # Stages 3 to 6 on the GPU thread; a cancel stops them between two steps and waits for
        # that, so that the next prediction starts on a free GPU.
        stop = threading.Event()
        try:
            future = asyncio.ensure_future(self._in_thread(self._gpu, self.service.run, valid, stop.is_set))
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                stop.set()
                await asyncio.wait([future])
                if not future.cancelled():
                    future.exception()  # retrieved: it is Canceled (or the step's own error)
                raise
        finally:
            self._turn.release()

    async def _leave(self, turn: asyncio.Future) -> None:
        """Give up a place in line: withdraw it, or release the GPU if it was already granted."""
        turn.cancel()
        await asyncio.wait([turn])
        if not turn.cancelled() and turn.exception() is None and self._turn is not None:
            self._turn.release()
