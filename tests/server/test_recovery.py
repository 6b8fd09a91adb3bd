"""Recovery, on servers of their own (each test here breaks its server for good): the liveness
check (scripts/healthcheck.py) fails on a dead worker, a full disk and slots stuck BUSY, drain
(scripts/drain.py) does not wait for a dead worker, and a full disk fails a prediction with a clear
error and no partial file. The check's rules on their own: tests/tools/test_healthcheck.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness.server import ROOT, CogServer
from scripts.drain import drain
from tests.conftest import OFFLINE_ENV
from tests.server.test_server import wait_in_flight

SMALL = {"prompt": "a lighthouse", "resolution": "720p", "aspect_ratio": "1:1"}
# A 720x720 output of the tiny model is noise, about 1.6 MB as PNG: the small disk holds a few.
DISK_MB = 12


class Served:
    """A server of this module's, with where it publishes its queue and keeps its outputs."""

    def __init__(self, server: CogServer, folder: Path, outputs: Path, small_disk: bool) -> None:
        self.server, self.folder, self.outputs, self.small_disk = server, folder, outputs, small_disk
        self.state = folder / "queue.json"

    def healthcheck(self, *args: str) -> subprocess.CompletedProcess[str]:
        """scripts/healthcheck.py as the probes run it, against this server."""
        command = [sys.executable, str(ROOT / "scripts" / "healthcheck.py"), "--url", self.server.url]
        command += ["--state-file", str(self.state), "--memory", str(self.folder / "liveness.json"), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    def health(self) -> dict:
        return requests.get(f"{self.server.url}/health-check", timeout=30).json()


def mount_small_disk(folder: Path) -> bool:
    """A tmpfs of DISK_MB at `folder` (needs root, as CI runs); False where it cannot be mounted."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def start(tiny_weights: Path, folder: Path, log: Path, small_disk: bool, **env: str) -> Served:
    outputs = folder / "tmp"  # the server's TMPDIR: its outputs go there
    mounted = mount_small_disk(outputs) if small_disk else (outputs.mkdir() or False)
    extra = {"GEN4_STEPS": "2", "GEN4_QUEUE_STATE_FILE": str(folder / "queue.json"), "TMPDIR": str(outputs)}
    server = CogServer(tiny_weights, log=log.open("w"), extra_env={**extra, **OFFLINE_ENV, **env})
    return Served(server, folder, outputs, mounted)


@pytest.fixture(scope="module")
def servers(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Served]]:
    """Two servers, started side by side: one on a small disk (then its worker is killed), one with
    a single slot (then stuck BUSY)."""
    a, b = tmp_path_factory.mktemp("recovery-a"), tmp_path_factory.mktemp("recovery-b")
    served = (
        start(tiny_weights, a, a / "server.log", small_disk=True),
        start(tiny_weights, b, b / "server.log", small_disk=False, COG_MAX_CONCURRENCY="1"),
    )
    try:
        for s in served:
            s.server.wait_ready(timeout=300)
        yield served
    finally:
        for s in served:
            s.server.stop()
            if s.small_disk:
                subprocess.run(["umount", "-l", str(s.outputs)], check=False)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_a_full_disk_fails_the_prediction_clearly_leaves_nothing_and_health_says_so(
    servers: tuple[Served, Served],
) -> None:
    served = servers[0]
    if not served.small_disk:
        pytest.skip("a small tmpfs could not be mounted (needs root, as CI runs)")
    assert served.health()["status"] == "READY"
    assert served.healthcheck().returncode == 0
    # Fill the disk, leaving less than an output needs.
    filler = served.outputs / "filler"
    free = os.statvfs(served.outputs).f_bavail * os.statvfs(served.outputs).f_frsize
    filler.write_bytes(b"\0" * (free - 300_000))
    before = files_under(served.outputs)
    response = served.server.predict(SMALL)
    body = response.json()
    assert body["status"] == "failed", body.get("status")
    assert "output image could not be written" in body["error"] and "No space left on device" in body["error"]
    assert files_under(served.outputs) == before, "a partial output was left behind"
    # Health says so, with the reason, and the liveness check acts on it.
    health = served.health()
    assert health["status"] == "UNHEALTHY", health
    assert "no room for outputs" in health["user_healthcheck_error"]
    check = served.healthcheck()
    assert check.returncode == 1 and "UNHEALTHY" in check.stderr and "no room for outputs" in check.stderr
    # Room again: healthy again, and predictions are written.
    filler.unlink()
    assert served.health()["status"] == "READY"
    assert served.healthcheck().returncode == 0
    assert served.server.predict(SMALL).json()["status"] == "succeeded"


def test_a_dead_worker_fails_the_check_and_drain_does_not_wait_for_it(
    servers: tuple[Served, Served], capsys: pytest.CaptureFixture[str]
) -> None:
    served = servers[0]
    assert served.healthcheck().returncode == 0
    prediction = f"doomed-{uuid.uuid4().hex[:8]}"
    long = {"prompt": "a long river", "resolution": "1080p", "aspect_ratio": "21:9"}
    response = requests.put(
        f"{served.server.url}/predictions/{prediction}",
        json={"input": long},
        headers={"Prefer": "respond-async"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    wait_in_flight(served.state, 1)
    worker = json.loads(served.state.read_text())["pid"]
    assert worker != served.server.proc.pid  # coglet's worker process, not the server
    os.kill(worker, signal.SIGKILL)  # as the kernel's OOM killer would
    check = served.healthcheck()
    assert check.returncode == 1, check.stdout
    assert "UNHEALTHY" in check.stderr or f"pid {worker}) is gone" in check.stderr, check.stderr
    # The queue still says one in flight: drain must see that nobody will finish it.
    assert json.loads(served.state.read_text())["in_flight"] == 1
    started = time.monotonic()
    left = drain(served.server.url, served.state, settle=0, timeout=120, poll=0.2)
    waited = time.monotonic() - started
    assert left == 1
    assert f"not waiting: the model's worker process (pid {worker}) is gone" in capsys.readouterr().err
    assert waited < 60, f"drain waited {waited:.0f}s of its 120s timeout for a dead worker"
    assert served.server.proc.wait(timeout=60) == 0  # and the server stopped on its /shutdown


def test_slots_stuck_busy_past_the_limit_fail_the_check(servers: tuple[Served, Served]) -> None:
    """coglet 0.23.1 never frees the slot of a 300-character prediction id (the proxy refuses such
    ids: tests/server/test_proxy.py): here, sent to coglet directly, it holds the single slot for good."""
    served = servers[1]
    assert served.healthcheck("--busy-limit", "1").returncode == 0
    response = requests.put(
        f"{served.server.url}/predictions/{'x' * 300}",
        json={"input": {**SMALL, "prompt": " "}},  # fails at once in the model: only the slot stays
        headers={"Prefer": "respond-async"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 60
    while served.health()["status"] != "BUSY" or json.loads(served.state.read_text())["in_flight"]:
        assert time.monotonic() < deadline, "the stuck slot never showed"
        time.sleep(0.2)
    first = served.healthcheck("--busy-limit", "1")
    assert first.returncode == 0, first.stderr  # BUSY is fine at first: it remembers since when
    time.sleep(1.5)  # past the limit, with no prediction admitted or finished meanwhile
    second = served.healthcheck("--busy-limit", "1")
    assert second.returncode == 1
    assert "BUSY for " in second.stderr and "slots held by predictions that never end" in second.stderr
