"""Schemathesis against the real server's /openapi.json, negative mode, bounded in time: no 5xx,
no hung server, and the next valid prediction is served."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from harness.server import CogServer

# Seconds of fuzzing: CI runs this bound; raise GEN4_FUZZ_SECONDS for a longer local run.
FUZZ_SECONDS = int(os.environ.get("GEN4_FUZZ_SECONDS", "45"))


def test_negative_fuzzing_finds_no_server_error(cog_server: CogServer, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{cog_server.url}/openapi.json",
        "--mode",
        "negative",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "25",
        "--max-time",
        str(FUZZ_SECONDS),
        "--request-timeout",
        "60",
        "--workers",
        "1",
        "--generation-deterministic",
        "--no-color",
    ]
    # The wall-clock bound catches a hung server: requests that never answer.
    done = subprocess.run(command, capture_output=True, text=True, timeout=FUZZ_SECONDS + 240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in done.stdout and "failed" not in done.stdout.split("SUMMARY")[-1].lower()
    assert requests.get(f"{cog_server.url}/health-check", timeout=10).json()["status"] == "READY"
    after = cog_server.predict({"prompt": "after the fuzzing", "resolution": "720p", "aspect_ratio": "1:1"}).json()
    assert after["status"] == "succeeded", after
