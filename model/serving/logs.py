"""What the server's logs show: each prediction's own lines (`say`), and none of the libraries'
warnings that say nothing about this server.

An operator reads the setup log (`docker logs`, Cog's JSON lines) to see whether the model loaded.
Two library warnings there are noise for this project, each matched by its logger and its text:
only that record is dropped, never the logger's other warnings. Installed by `model/__init__.py`,
before any module imports diffusers, because the first one is emitted at import time.
"""

from __future__ import annotations

import logging
import sys

# (logger name, text in the message) of each dropped record.
VACUOUS_WARNINGS = (
    # transformers 5, once per image processor name imported without torchvision (diffusers imports
    # CLIPImageProcessor and SiglipImageProcessor): it advises installing torchvision. The project
    # builds CLIPImageProcessorPil itself (model/engine/pipeline.py), the backend its image has.
    ("transformers.utils.import_utils", "requires torchvision (not installed); falling back to"),
    # diffusers 0.42, on every cast of a model to a dtype, even when the list of modules to keep in
    # float32 is empty (its check is `[] is not None`). Loading IP-Adapter and making the refine
    # pipeline cast the UNet and VAE to the dtype they already have.
    ("diffusers.models.modeling_utils", "should be kept in float32: []"),
)


class DropMessage(logging.Filter):
    """Drops the records whose message contains `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def drop_vacuous_warnings() -> None:
    """Install the filters (once: a second call adds nothing)."""
    for name, text in VACUOUS_WARNINGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.text == text for f in logger.filters):
            logger.addFilter(DropMessage(text))


def say(line: str) -> None:
    """One line of the prediction's logs. On stdout on purpose: Cog puts it in the prediction's
    logs, where Replicate's model shows the same lines."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
