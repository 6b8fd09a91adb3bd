"""Idle warm-up: a server's first request of a shape without its CUDA graph captures.

A request's first use of a shape (size, reference count, number of tagged references, whether any
reference is global, phase) captures the UNet's CUDA graphs (model/engine/graphs.py), which makes a
server's first request of a shape several times slower than the next (docs/performance.md).
Capturing at setup would delay READY as much, for shapes that may never come. Instead, once setup
ends and while no prediction is in flight, the server generates the entries of GEN4_WARMUP with
each layout of 0 to 3 references (mentioned, unmentioned: global, or both), on its GPU thread. A
prediction that arrives stops it at the next denoising step (a capture under way finishes first),
and it goes on where it stopped when idle again.

The jobs and their step count are planned here (pure: no torch); ImageService.warm_up generates
them; the queue (model/serving/queue.py) says when the server is busy.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

from model.contract.tables import MAX_REFERENCES
from model.engine.plan import Plan, plan_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmupJob:
    """One warm-up generation: a plan, with this many tagged references, the first `subjects` of
    them mentioned as subjects, the next `places` as places, the rest not mentioned (global)."""

    plan: Plan
    references: int
    subjects: int
    places: int = 0

    def __post_init__(self) -> None:
        if min(self.subjects, self.places) < 0 or self.subjects + self.places > self.references:
            raise ValueError(f"{self.subjects} subjects and {self.places} places among {self.references} references")

    @property
    def tags(self) -> list[str]:
        return [f"ref{k + 1}" for k in range(self.references)]

    @property
    def prompt(self) -> str:
        """'a warm-up of @ref1 and @ref2 in @ref3': each place after "in", as a request names one."""
        subjects = self.tags[: self.subjects]
        places = self.tags[self.subjects : self.subjects + self.places]
        mentions = " and ".join(f"@{tag}" for tag in subjects)
        return (f"a warm-up of {mentions}" if mentions else "a warm-up") + "".join(f" in @{p}" for p in places)


def warmup_jobs(entries: Iterable[tuple[str, str]], max_references: int = MAX_REFERENCES) -> list[WarmupJob]:
    """Every layout of references a step's graph tells apart, each plan once (720p and 1080p of
    one aspect ratio share their base pass, not their plan), the most frequent first: no
    reference; 1 to 3 references all mentioned; 1 to 3 none of which is mentioned (no tags, or
    tags the prompt does not name: global); then 2 or 3 with some mentioned and the rest global.
    A graph tells neither a place from a subject (both record their maps) nor one global
    reference's position from another's, only the number of tagged references and whether any
    reference is global (model/engine/graphs.py): so these cover every request of the entry whose
    prompt fits CLIP's window of 77 tokens, its references in any order, subjects or places
    (places are global when no subject is named)."""
    plans = dict.fromkeys(plan_for(*entry) for entry in entries)
    counts = range(1, max_references + 1)
    mentioned = [(n, n, 0) for n in counts]
    unmentioned = [(n, 0, 0) for n in counts]
    mixed = [(n, s, 0) for n in counts for s in range(n - 1, 0, -1)]
    layouts = [(0, 0, 0), *mentioned, *unmentioned, *mixed]
    return [WarmupJob(plan, n, s, p) for plan in plans for n, s, p in layouts]


def warmup_steps(steps: int, warmup_fraction: float) -> int:
    """The fewest base steps that meet each phase a request of `steps` steps meets: the tag
    warm-up's steps (tagged references off), its last step (the anchors record) and the
    localized steps. ceil(fraction * n) >= 2 warm-up steps need n > 1 / fraction: 5 at 0.25."""
    return min(steps, math.floor(1 / warmup_fraction) + 1)


StopCheck = Callable[[], bool]
RunJob = Callable[[WarmupJob, StopCheck], bool]  # True when the job ran to its end


class IdleWarmup:
    """Runs the warm-up jobs one by one on the GPU's executor while `busy()` is false; `poke()`
    starts it, or resumes it after the predictions that stopped it."""

    def __init__(
        self,
        jobs: list[WarmupJob],
        run_job: RunJob,
        gpu: Executor,
        busy: Callable[[], bool],
        report: Callable[[str], None] = log.info,
    ) -> None:
        self.left = list(jobs)
        self.total = len(jobs)
        self.run_job = run_job
        self.gpu = gpu
        self.busy = busy
        self.report = report  # the server's log (outside any prediction's: Cog routes those by context)
        self.seconds = 0.0  # spent warming, over every resumption
        self._running = False
        self._lock = threading.Lock()

    def poke(self) -> None:
        """Start warming on the GPU's executor if there is work left and nothing else wants it."""
        with self._lock:
            if self._running or not self.left or self.busy():
                return
            self._running = True
        self.gpu.submit(self._work)

    def _work(self) -> None:
        started = time.perf_counter()
        try:
            while self.left and not self.busy():
                if not self.run_job(self.left[0], self.busy):
                    break
                self.left.pop(0)
        except Exception:  # never the server's failure: a request captures its own graphs instead
            log.warning("warm-up failed", exc_info=True)
            self.report("Warm-up failed (its error is logged); requests of its shapes capture their graphs themselves")
            self.left.clear()
            return
        finally:
            self.seconds += time.perf_counter() - started
            with self._lock:
                self._running = False
        if not self.left:
            self.report(f"Warm-up done: {self.total} generations in {self.seconds:.1f}sec")
            return
        self.report(f"Warm-up paused for a prediction: {len(self.left)} of {self.total} generations left")
        self.poke()  # the predictions that stopped it may have ended meanwhile
