"""Drain a Cog server before it stops: wait until no prediction is in flight, then POST /shutdown.

    python scripts/drain.py [--url http://127.0.0.1:5000] [--state-file /tmp/gen4-queue.json]
                            [--settle 5] [--timeout 100]

For servers started with `--await-explicit-shutdown true` (they ignore SIGTERM): Kubernetes runs
this as the pod's preStop hook (deploy/kubernetes.yaml). coglet 0.23's /shutdown stops at once,
dropping admitted predictions, so the wait happens here: after `--settle` seconds (the load
balancer stops sending new requests), it polls the queue's state file (model/serving/queue.py writes the
number of predictions in flight) until it reads zero twice, then asks Cog to shut down. It stops
waiting at once when nothing is left to wait for: the worker process that published the count is
gone (killed, out of memory: coglet does not restart it), or the server no longer answers as a live
one (scripts/healthcheck.py's reasons but a full disk, under which admitted predictions still end).
Light: the standard library and model/serving/settings.py (no torch), so it starts fast in the
model's image beside the server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model.serving.settings import settings_from_env
from scripts.healthcheck import health, queue_state, worker_gone


def in_flight(state_file: Path) -> int:
    """Predictions admitted and not finished; 0 when the server never published (no queue yet)."""
    try:
        return int(json.loads(state_file.read_text())["in_flight"])
    except FileNotFoundError:
        return 0


def dead(url: str, state_file: Path) -> str | None:
    """Why the admitted predictions will never finish (None: they may)."""
    gone = worker_gone(queue_state(state_file))
    if gone:
        return gone
    try:
        status = health(url)["status"]
    except (OSError, ValueError) as exc:
        return f"no health answer from {url}: {exc}"
    return f"health is {status}" if status in ("SETUP_FAILED", "DEFUNCT") else None


def drain(url: str, state_file: Path, settle: float, timeout: float, poll: float = 0.5) -> int:
    """Wait for an idle queue (or the timeout, or a dead server), then POST /shutdown; returns what
    was in flight when it stopped waiting (0 when drained)."""
    time.sleep(settle)
    deadline = time.monotonic() + timeout
    zeros = 0
    left = in_flight(state_file)
    while time.monotonic() < deadline:
        left = in_flight(state_file)
        zeros = zeros + 1 if left == 0 else 0
        if zeros >= 2:
            break
        reason = dead(url, state_file) if left else None
        if reason:
            print(f"drain: not waiting: {reason}", file=sys.stderr)
            break
        time.sleep(poll)
    print(f"drain: {left} prediction(s) in flight; shutting down {url}", file=sys.stderr)
    request = urllib.request.Request(f"{url}/shutdown", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10):
            pass
    except OSError as exc:  # already gone: nothing left to shut down
        print(f"drain: {url}/shutdown: {exc}", file=sys.stderr)
    return left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '5000')}")
    # The same setting the server reads (GEN4_QUEUE_STATE_FILE), so both agree by default.
    parser.add_argument("--state-file", type=Path, default=settings_from_env().queue_state_file)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds for the load balancer to stop sending")
    parser.add_argument("--timeout", type=float, default=100.0, help="most seconds to wait for in-flight predictions")
    args = parser.parse_args()
    sys.exit(1 if drain(args.url, args.state_file, args.settle, args.timeout) else 0)


if __name__ == "__main__":
    main()
