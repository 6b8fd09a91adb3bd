"""Stage 5: write the image to a file whose name no other prediction shares."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from PIL import Image

_SAVE_OPTIONS = {
    "png": ("PNG", {"optimize": False, "compress_level": 4}),  # level 4: near-max size gain, fast
    "jpg": ("JPEG", {"quality": 95}),
    "webp": ("WEBP", {"quality": 95}),
}


class OutputWriter:
    """Writes each prediction's image into a fresh folder and removes the previous one's.

    Cog reads the returned file once run() returns, so only the last output needs to stay;
    nothing piles up in the temporary folder over a long-running server.
    """

    def __init__(self, output_format: str) -> None:
        self.output_format = output_format
        self._last_dir: Path | None = None

    def write(self, image: Image.Image, seed: int) -> Path:
        self.clean()
        folder = Path(tempfile.mkdtemp(prefix="gen4-out-"))
        self._last_dir = folder
        # Unique name: with --upload-url no prediction overwrites another's file.
        path = folder / f"gen4-{seed}-{uuid.uuid4().hex[:12]}.{self.output_format}"
        kind, options = _SAVE_OPTIONS[self.output_format]
        image.save(path, kind, **options)
        return path

    def clean(self) -> None:
        if self._last_dir is not None:
            shutil.rmtree(self._last_dir, ignore_errors=True)
            self._last_dir = None
