"""Stage 6 of a prediction (model/serving/service.py): write the image to a file whose name no
other prediction shares."""

from __future__ import annotations

import shutil
import tempfile
import uuid
import weakref
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from model.serving.png import PngEncoder

# Mask colours, one per reference in request order (max 3 references; a 4th colour to spare).
MASK_COLOURS: tuple[tuple[int, int, int], ...] = ((230, 60, 60), (60, 140, 230), (60, 190, 90), (230, 180, 40))

# PNG goes through model/serving/png.py: deflate level 1 on every core, since the write is on the
# request's path, and higher levels cost several times the time for a few percent of size
# (docs/performance.md).
_SAVE_OPTIONS = {
    "jpg": ("JPEG", {"quality": 95}),
    "webp": ("WEBP", {"quality": 95}),
}


class OutputWriter:
    """Writes each prediction's image into a fresh folder and removes the oldest ones.

    Cog reads the returned file after run() returns, while queued predictions may already be
    generating: the last `keep` outputs stay (more than the queue holds), older ones go, so nothing
    piles up in the temporary folder over a long-running server. All of them live under one folder
    of this writer's, removed when the process exits, so that restarts leave nothing behind either.
    """

    def __init__(self, output_format: str, keep: int = 8) -> None:
        self.output_format = output_format
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="gen4-out-"))
        # The writer owns its files: they go with it, when it is closed or collected, or at the
        # latest at interpreter exit (atexit, which coglet's worker runs when the server stops).
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.root, ignore_errors=True)
        self._dirs: deque[Path] = deque()
        self._png = PngEncoder() if output_format == "png" else None

    def write(self, image: Image.Image, seed: int) -> Path:
        folder = Path(tempfile.mkdtemp(prefix="prediction-", dir=self.root))
        self._dirs.append(folder)
        while len(self._dirs) > self.keep:
            shutil.rmtree(self._dirs.popleft(), ignore_errors=True)
        # Unique name: with --upload-url no prediction overwrites another's file.
        path = folder / f"gen4-{seed}-{uuid.uuid4().hex[:12]}.{self.output_format}"
        if self._png is not None:
            path.write_bytes(self._png(image))
        else:
            kind, options = _SAVE_OPTIONS[self.output_format]
            image.save(path, kind, **options)
        return path

    def close(self) -> None:
        """Remove every output this writer wrote."""
        self._cleanup()


def make_masks_dir(folder: Path) -> None:
    """Make the folder that keeps the tag masks (GEN4_MASKS_DIR), or say why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(f"GEN4_MASKS_DIR={str(folder)!r} cannot be used as a folder: {exc}") from exc


def write_mask_image(image: Image.Image, masks: np.ndarray, labels: list[str], path: Path) -> Path:
    """Each reference's mask ([n, h, w] in 0..1, any resolution) in its colour over a grey copy of
    the image, with a legend: where each @tag landed."""
    grey = np.asarray(image.convert("L").convert("RGB"), dtype=np.float32)
    out = grey.copy()
    for k, mask in enumerate(masks):
        big = Image.fromarray((np.clip(mask, 0, 1) * 255).astype(np.uint8)).resize(image.size, Image.Resampling.NEAREST)
        alpha = np.asarray(big, dtype=np.float32)[..., None] / 255 * 0.55
        colour = np.array(MASK_COLOURS[k % len(MASK_COLOURS)], dtype=np.float32)
        out = out * (1 - alpha) + colour * alpha
    overlay = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(overlay)
    for k, label in enumerate(labels):
        y = 8 + 18 * k
        draw.rectangle((8, y, 20, y + 12), fill=MASK_COLOURS[k % len(MASK_COLOURS)])
        draw.text((26, y), label, fill=(255, 255, 255))
    overlay.save(path, "PNG")
    return path
