"""Read the weight files into the page cache while the server's worker imports torch and diffusers.

On a cold start the weights (gigabytes) come from disk, and the seconds of imports before setup
leave the disk mostly idle. Reading the files in a thread meanwhile makes the load that follows
read memory. Measured with scripts/lab/cold_start.py (README, Performance). Pure: no torch.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from model.engine.weights import weight_files
from model.serving.settings import settings_from_env

log = logging.getLogger(__name__)
CHUNK = 8 << 20  # large sequential reads: the disk's best pattern
THREAD_NAME = "gen4-prefetch"


def read_files(files: list[Path]) -> int:
    """Read every file once, discarding the bytes (they stay in the page cache); returns bytes read."""
    buf = bytearray(CHUNK)
    total = 0
    for path in files:
        try:
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
        except OSError as exc:  # a prefetch only: the load reports missing or unreadable files
            log.debug("prefetch of %s stopped: %s", path, exc)
    return total


def prefetch_weights() -> threading.Thread | None:
    """Start reading the weights that the settings name (GEN4_*, WEIGHTS_DIR) in a daemon thread.
    None when the settings are invalid (setup reports them) or there is nothing to read."""
    try:
        settings = settings_from_env()
    except ValueError:
        return None
    if not settings.prefetch:
        return None
    files = weight_files(settings.weights_dir, settings.turbo, settings.safety_checker)
    if not files:
        return None
    thread = threading.Thread(target=read_files, args=(files,), name=THREAD_NAME, daemon=True)
    thread.start()
    return thread
