"""A prediction canceled before it generates never generates (issue 36), in the service itself:
`ImageService.run` checks for a cancel before any model work and before the first denoising step;
and coglet's cancel exception, which it raises without a message, gets one. The same through the
real server, cancels sent right after each prediction: tests/server/test_cancel.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import coglet
import pytest

from model.contract.request import Request
from model.serving.cancel import MESSAGE, describe_cancel
from model.serving.service import Canceled, ImageService
from model.serving.settings import Settings
from model.serving.setup import build_service
from tests.conftest import small_plans

REQUEST = Request(prompt="a long river", resolution="720p", aspect_ratio="1:1", seed=3)


@pytest.fixture(scope="module")
def service(tiny_weights: Path) -> Iterator[ImageService]:
    with small_plans():
        yield build_service(Settings(weights_dir=tiny_weights, steps=2, device="cpu"))


def outputs(service: ImageService) -> list[Path]:
    return [p for p in service.output.root.rglob("*") if p.is_file()]


def test_canceled_before_run_does_no_model_work(service: ImageService, capsys: pytest.CaptureFixture) -> None:
    valid = service.validate(REQUEST)
    before = service.steps_run
    with pytest.raises(Canceled, match="canceled before generating"):
        service.run(valid, should_stop=lambda: True)
    assert service.steps_run == before and not outputs(service)
    assert "Generating" not in capsys.readouterr().out


def test_canceled_while_preparing_stops_before_the_first_step(service: ImageService) -> None:
    """A cancel that comes after run() began, but before denoising: no step runs (the step callback
    is asked before the first step too)."""
    valid = service.validate(REQUEST)
    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 1  # not at run()'s own check: from the next one on

    before = service.steps_run
    with pytest.raises(Canceled, match="canceled before generating"):
        service.run(valid, should_stop=should_stop)
    assert service.steps_run == before and not outputs(service)
    assert len(asked) == 2  # run()'s own check, then the step callback's before the first step


def test_coglet_cancel_exception_says_what_happened() -> None:
    """coglet raises its CancelationException with no message into its own thread when a cancel
    comes while it starts a prediction; predict.py's setup gives it one (model/serving/cancel.py)."""
    describe_cancel(coglet.CancelationException)
    assert str(coglet.CancelationException()) == MESSAGE
    assert "cancelled" in MESSAGE  # what coglet's wait for run()'s result maps to `canceled`
    assert str(coglet.CancelationException("given")) == "given"
