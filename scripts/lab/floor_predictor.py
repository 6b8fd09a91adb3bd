"""predict.py's Predictor with the model taken out, for scripts/benchmark.py's server floor.

The same inputs and schema (coglet validates the request and downloads its data-URI references
as for the real one), but `run` returns a fresh copy of the file BENCH_FLOOR_OUTPUT names (the
real server's output for the same request: the same bytes to encode as a data URI or upload).
What a prediction costs here is coglet's own cost for the request and its output: the least any
predictor serving this interface pays, against which the real server's overhead is read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from model.contract.request import Request
from predict import Predictor


class CopyQueue:
    """Stands in for model/serving/queue.py's PredictionQueue: no validation, no queue, no model."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def problem(self) -> str | None:
        return None  # the health check's question: nothing here can fail every prediction

    async def predict(self, request: Request) -> Path:
        # A new file each time, as the real server writes one per prediction; beside the source,
        # in the benchmark's temporary folder, which goes with it.
        handle, name = tempfile.mkstemp(suffix=self.source.suffix, dir=self.source.parent)
        os.close(handle)
        path = Path(name)
        shutil.copyfile(self.source, path)
        return path


class FloorPredictor(Predictor):
    def setup(self) -> None:
        self.queue = CopyQueue(Path(os.environ["BENCH_FLOOR_OUTPUT"]))
