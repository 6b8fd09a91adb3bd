"""Liveness check of the Cog server: exit 0 while it can serve, 1 with the reason when only a
restart helps. The Kubernetes liveness probe (deploy/kubernetes.yaml) and the compose healthcheck
(deploy/compose.yaml) run it beside the server:

    python scripts/healthcheck.py [--url http://127.0.0.1:5000] [--state-file /tmp/gen4-queue.json]
                                  [--busy-limit 900] [--memory /tmp/gen4-liveness.json]

It fails when
- /health-check does not answer (or not with Cog's JSON);
- the status is UNHEALTHY (the model's own check failed: its worker process is gone, or outputs
  cannot be written, e.g. a full disk), SETUP_FAILED or DEFUNCT (coglet answers those with HTTP 200,
  so a plain HTTP probe passes them);
- the worker process that publishes the queue's state (model/serving/queue.py) is gone;
- the status has been BUSY (every slot taken) for longer than --busy-limit seconds with no
  prediction admitted or finished meanwhile: slots held by predictions that never end. The limit
  must exceed the longest prediction (a full queue finishes one at least that often). Since when
  it has been BUSY is remembered in --memory between two runs.
STARTING (setup) passes: the startup probe and compose's start_period cover it.
Light on purpose (the standard library and model/serving/settings.py): it runs every few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model.serving.settings import settings_from_env

# Statuses that no waiting cures: coglet answers them with HTTP 200.
DEAD = ("UNHEALTHY", "SETUP_FAILED", "DEFUNCT")
DEFAULT_BUSY_LIMIT_S = 900.0
DEFAULT_MEMORY = Path(tempfile.gettempdir()) / "gen4-liveness.json"


def health(url: str, timeout: float = 10) -> dict:
    """The server's /health-check answer; raises OSError (or ValueError) when there is none."""
    with urllib.request.urlopen(f"{url}/health-check", timeout=timeout) as response:
        answer = json.loads(response.read())
    if not isinstance(answer, dict) or "status" not in answer:
        raise ValueError(f"not a Cog health answer: {str(answer)[:200]}")
    return answer


def queue_state(state_file: Path) -> dict | None:
    """What the queue last published (in_flight, pid, time, ...); None before it ever did."""
    try:
        return json.loads(state_file.read_text())
    except (FileNotFoundError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, killed and not yet reaped, does not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def worker_gone(state: dict | None) -> str | None:
    """Why the queue's worker process is known to be gone, or None."""
    if state is None or not isinstance(state.get("pid"), int):
        return None
    if process_alive(state["pid"]):
        return None
    return f"the model's worker process (pid {state['pid']}) is gone, with {state.get('in_flight', '?')} in flight"


def verdict(answer: dict, state: dict | None, busy_since: float | None, now: float, busy_limit: float) -> str | None:
    """Why the server is not live (None: it is). `busy_since`: when BUSY was first seen in a row."""
    status = answer["status"]
    if status in DEAD:
        detail = answer.get("user_healthcheck_error") or (answer.get("setup") or {}).get("logs") or ""
        return f"health is {status}" + (f": {str(detail).strip()[-500:]}" if detail else "")
    if status in ("READY", "BUSY"):
        gone = worker_gone(state)
        if gone:
            return gone
    if status == "BUSY" and busy_since is not None:
        progress = max(busy_since, float((state or {}).get("time") or 0))
        if now - progress > busy_limit:
            return (
                f"BUSY for {now - busy_since:.0f}s with no prediction admitted or finished in the last "
                f"{now - progress:.0f}s (limit {busy_limit:.0f}s): slots held by predictions that never end"
            )
    return None


def remember_busy(memory: Path, status: str, now: float) -> float | None:
    """Since when the status has been BUSY in a row (kept in `memory` between runs); None if not."""
    if status != "BUSY":
        memory.unlink(missing_ok=True)
        return None
    try:
        return float(json.loads(memory.read_text())["busy_since"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        tmp = memory.with_suffix(".tmp")
        tmp.write_text(json.dumps({"busy_since": now}))
        tmp.replace(memory)
        return now


def check(url: str, state_file: Path, busy_limit: float, memory: Path) -> str | None:
    """One liveness check: the reason it fails, or None."""
    try:
        answer = health(url)
    except (OSError, ValueError) as exc:
        return f"no health answer from {url}: {exc}"
    now = time.time()
    busy_since = remember_busy(memory, answer["status"], now)
    return verdict(answer, queue_state(state_file), busy_since, now, busy_limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '5000')}")
    # The same setting the server reads (GEN4_QUEUE_STATE_FILE), so both agree by default.
    parser.add_argument("--state-file", type=Path, default=settings_from_env().queue_state_file)
    parser.add_argument("--busy-limit", type=float, default=DEFAULT_BUSY_LIMIT_S, help="seconds BUSY without progress")
    parser.add_argument("--memory", type=Path, default=DEFAULT_MEMORY, help="where it remembers since when BUSY")
    args = parser.parse_args()
    reason = check(args.url, args.state_file, args.busy_limit, args.memory)
    if reason:
        print(f"healthcheck: not live: {reason}", file=sys.stderr)
        sys.exit(1)
    print("healthcheck: live")


if __name__ == "__main__":
    main()
