"""The real Predictor with a fault injector, for tests/server/test_faults.py only.

A prompt containing `inject-oom` makes the UNet raise torch.OutOfMemoryError (what CUDA raises)
at its first call in that prediction; `release_memory` says in the prediction's logs when it runs,
and appends a line to the file FAULT_LOG names (log lines after a cancel reach no prediction).
Everything else is the real model and the real server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from model.contract.request import Request, ValidRequest
from model.serving.logs import say
from predict import Predictor


class FaultyPredictor(Predictor):
    def setup(self) -> None:
        super().setup()
        service = self.queue.service
        armed = {"oom": False}
        validate, forward, release = service.validate, service.pipe.unet.forward, service.release_memory

        def validate_and_arm(request: Request, should_stop: Callable[[], bool] | None = None) -> ValidRequest:
            armed["oom"] = "inject-oom" in request.prompt
            return validate(request, should_stop)

        def unet_forward(*args: object, **kwargs: object) -> object:
            if armed["oom"]:
                armed["oom"] = False
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            return forward(*args, **kwargs)

        def release_and_say() -> None:
            release()
            say("[fault-injector] release_memory ran")
            if os.environ.get("FAULT_LOG"):
                with open(os.environ["FAULT_LOG"], "a") as f:
                    f.write(f"release_memory {time.time()}\n")

        service.validate = validate_and_arm
        service.pipe.unet.forward = unet_forward
        service.release_memory = release_and_say
