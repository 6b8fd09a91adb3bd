"""Drain a Cog server before it stops: wait until no prediction is in flight, then POST /shutdown.

    python scripts/drain.py [--url http://127.0.0.1:5000] [--state-file /tmp/gen4-queue.json]
                            [--settle 5] [--timeout 100]

For servers started with `--await-explicit-shutdown true` (they ignore SIGTERM): Kubernetes runs
this as the pod's preStop hook (deploy/kubernetes.yaml). coglet 0.23's /shutdown stops at once,
dropping admitted predictions, so the wait happens here: after `--settle` seconds (the load
balancer stops sending new requests), it polls the queue's state file (model/serving/queue.py writes the
number of predictions in flight) until it reads zero twice, then asks Cog to shut down.
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


def in_flight(state_file: Path) -> int:
    """Predictions admitted and not finished; 0 when the server never published (no queue yet)."""
    try:
        return int(json.loads(state_file.read_text())["in_flight"])
    except FileNotFoundError:
        return 0


def drain(url: str, state_file: Path, settle: float, timeout: float, poll: float = 0.5) -> int:
    """Wait for an idle queue (or the timeout), then POST /shutdown; returns what was in flight
    when it gave up waiting (0 when drained)."""
    time.sleep(settle)
    deadline = time.monotonic() + timeout
    zeros = 0
    left = in_flight(state_file)
    while time.monotonic() < deadline:
        left = in_flight(state_file)
        zeros = zeros + 1 if left == 0 else 0
        if zeros >= 2:
            break
        time.sleep(poll)
    print(f"drain: {left} prediction(s) in flight; shutting down {url}", file=sys.stderr)
    request = urllib.request.Request(f"{url}/shutdown", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass
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
