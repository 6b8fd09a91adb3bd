"""Cog predictor with exactly the interface of Replicate's runwayml/gen4-image.

Thin on purpose: the Input declarations, then one call into model/. `run` is async so that Cog
can admit up to cog.yaml's `concurrency.max` predictions at once; model/serving/queue.py runs their
generations one at a time, first in first out, instead of answering 409.
"""

from cog import BaseRunner, CancelationException, Input, Path

from model.serving.prefetch import prefetch_weights

# Before the heavy imports below (torch, diffusers: seconds), so that a cold start reads the
# weights from disk meanwhile (model/serving/prefetch.py).
prefetch_weights()

from model.contract.request import Request  # noqa: E402
from model.contract.tables import (  # noqa: E402
    ASPECT_RATIOS,
    DEFAULT_ASPECT_RATIO,
    DEFAULT_RESOLUTION,
    RESOLUTIONS,
)
from model.serving.cancel import describe_cancel  # noqa: E402
from model.serving.fetch import ReferenceURI  # noqa: E402
from model.serving.queue import PredictionQueue  # noqa: E402
from model.serving.setup import service_from_env  # noqa: E402


class Predictor(BaseRunner):
    def setup(self) -> None:
        """Load the model from WEIGHTS_DIR (default weights/); settings come from GEN4_* variables."""
        # coglet raises this without a message on a cancel that comes while it starts a prediction
        # (model/serving/cancel.py): with one, the error says what happened.
        describe_cancel(CancelationException)
        service = service_from_env()
        self.queue = PredictionQueue(service, service.settings.queue_state_file)

    def healthcheck(self) -> bool:
        """Cog's own health check: an error here makes /health-check say UNHEALTHY with its text
        (a full disk: every prediction would fail after generating), which the liveness probe
        (scripts/healthcheck.py) acts on."""
        problem = self.queue.problem()
        if problem:
            raise RuntimeError(problem)
        return True

    async def run(
        self,
        seed: int | None = Input(description="Random seed. Set for reproducible generation", default=None),
        prompt: str = Input(description="Text prompt for image generation"),
        resolution: str = Input(description="Image resolution", choices=list(RESOLUTIONS), default=DEFAULT_RESOLUTION),
        aspect_ratio: str = Input(
            description="Image aspect ratio", choices=list(ASPECT_RATIOS), default=DEFAULT_ASPECT_RATIO
        ),
        reference_tags: list[str] = Input(
            description="An optional tag for each of your reference images. Tags must be alphanumeric and start with a letter. You can reference them in your prompt using @tag_name. Tags must be between 3 and 15 characters.",
            default=[],
        ),
        # The URIs as sent (a `format: uri` string each in the schema, as for cog.Path): Cog does
        # not download them; model/serving/fetch.py does, bounded (see ReferenceURI).
        reference_images: list[ReferenceURI] = Input(
            description="Up to 3 reference images. Images must be between 0.5 and 2 aspect ratio.",
            default=[],
        ),
    ) -> Path:
        return await self.queue.predict(
            Request(
                prompt=prompt,
                resolution=resolution,
                aspect_ratio=aspect_ratio,
                reference_tags=reference_tags,
                reference_images=reference_images,
                seed=seed,
            )
        )
