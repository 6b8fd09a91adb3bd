"""scripts/healthcheck.py's rules on their own (against real servers: tests/server/test_recovery.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.healthcheck import DEAD, process_alive, remember_busy, verdict, worker_gone

NOW = 1_000_000.0


def state(pid: int, seconds_ago: float = 0.0, in_flight: int = 0) -> dict:
    """What the queue publishes, as of `seconds_ago`."""
    return {"in_flight": in_flight, "pid": pid, "time": NOW - seconds_ago}


ALIVE = state(pid=os.getpid())  # this test's own process: alive


@pytest.mark.parametrize("status", DEAD)
def test_dead_statuses_fail_with_their_reason(status: str) -> None:
    answer = {"status": status, "user_healthcheck_error": "Healthcheck error: protocol error: channel closed"}
    reason = verdict(answer, ALIVE, None, NOW, busy_limit=900)
    assert reason == f"health is {status}: Healthcheck error: protocol error: channel closed"
    # SETUP_FAILED has no user error: the end of the setup logs says why.
    reason = verdict({"status": status, "setup": {"logs": "...\nCUDA out of memory\n"}}, None, None, NOW, 900)
    assert reason == f"health is {status}: ...\nCUDA out of memory"


@pytest.mark.parametrize("status", ["STARTING", "UNKNOWN", "READY", "BUSY"])
def test_live_statuses_pass(status: str) -> None:
    assert verdict({"status": status}, ALIVE, NOW - 10, NOW, busy_limit=900) is None


def test_busy_without_progress_past_the_limit_fails() -> None:
    busy = {"status": "BUSY"}
    # BUSY for an hour, but a prediction finished a minute ago: a full queue at work.
    assert verdict(busy, state(ALIVE["pid"], seconds_ago=60), NOW - 3600, NOW, busy_limit=900) is None
    # BUSY for an hour and nothing admitted or finished for as long.
    reason = verdict(busy, state(ALIVE["pid"], seconds_ago=4000), NOW - 3600, NOW, busy_limit=900)
    assert reason is not None and reason.startswith("BUSY for 3600s with no prediction admitted or finished")
    # The queue idle for hours, then every slot taken a minute ago: too early to tell.
    assert verdict(busy, state(ALIVE["pid"], seconds_ago=9000), NOW - 60, NOW, busy_limit=900) is None
    # No queue state at all (never published): since when BUSY alone decides.
    assert verdict(busy, None, NOW - 901, NOW, busy_limit=900) is not None


def test_a_gone_or_zombie_worker_fails() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while process_alive(child.pid):  # exits, not reaped yet: a zombie is not alive
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.05)
    reason = verdict({"status": "READY"}, state(child.pid, in_flight=1), None, NOW, busy_limit=900)
    assert reason == f"the model's worker process (pid {child.pid}) is gone, with 1 in flight"
    child.wait()  # reaped: gone altogether
    assert worker_gone(state(child.pid)) is not None
    # While starting, an old state file (an earlier server's) says nothing about this one.
    assert verdict({"status": "STARTING"}, state(child.pid), None, NOW, busy_limit=900) is None


def test_busy_is_remembered_between_runs_and_forgotten_after(tmp_path: Path) -> None:
    memory = tmp_path / "liveness.json"
    assert remember_busy(memory, "BUSY", NOW) == NOW
    assert remember_busy(memory, "BUSY", NOW + 20) == NOW  # since the first time in a row
    assert remember_busy(memory, "READY", NOW + 40) is None
    assert not memory.exists()
    assert remember_busy(memory, "BUSY", NOW + 60) == NOW + 60
