"""Stage 6 of a prediction (model/serving/service.py): write the image to a file whose name no
other prediction shares."""

from __future__ import annotations

import io
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


class OutputWriteError(RuntimeError):
    """The output could not be written (a full disk): the prediction fails, nothing is left."""


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
        # Bytes an output needs: the largest written, or the one that found no room. Below that
        # much free space the server reports itself unhealthy (`problem`).
        self.need = 0

    def _encode(self, image: Image.Image) -> bytes:
        if self._png is not None:
            return self._png(image)
        kind, options = _SAVE_OPTIONS[self.output_format]
        buf = io.BytesIO()
        image.save(buf, kind, **options)
        return buf.getvalue()

    def write(self, image: Image.Image, seed: int) -> Path:
        # Encoded first, in memory: a full disk then fails one write call, whose partial file goes.
        data = self._encode(image)
        while len(self._dirs) >= self.keep:
            shutil.rmtree(self._dirs.popleft(), ignore_errors=True)
        folder: Path | None = None
        try:
            folder = Path(tempfile.mkdtemp(prefix="prediction-", dir=self.root))
            # Unique name: with --upload-url no prediction overwrites another's file.
            path = folder / f"gen4-{seed}-{uuid.uuid4().hex[:12]}.{self.output_format}"
            path.write_bytes(data)
        except OSError as exc:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            self.need = max(self.need, len(data))
            raise OutputWriteError(
                f"the {len(data) / 1e6:.1f} MB output image could not be written to {self.root}: "
                f"{exc.strerror or exc} ({self.free() / 1e6:.1f} MB free); the image is lost, and the "
                "server reports UNHEALTHY until there is room"
            ) from None
        self._dirs.append(folder)
        self.need = max(self.need, len(data))
        return path

    def free(self) -> int:
        """Free bytes where the outputs go (0 if that folder is gone)."""
        try:
            return shutil.disk_usage(self.root).free
        except OSError:
            return 0

    def problem(self) -> str | None:
        """Why the next output could not be written (None: it could): the outputs' folder is gone,
        or has less room than an output needs."""
        if not self.root.is_dir():
            return f"the outputs' folder {self.root} is gone"
        free = self.free()
        if free < self.need:
            return (
                f"no room for outputs: {free / 1e6:.1f} MB free in {self.root}, "
                f"an output needs up to {self.need / 1e6:.1f} MB"
            )
        return None

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
