"""PNG encoding on every core: the output's write is on each request's path, and Pillow's encoder
runs on one core (a noticeable share of a prediction on a GPU host: docs/performance.md).

The image is cut into bands of rows. Each band is filtered and deflated in its own thread (numpy
and zlib release the GIL), and the bands' deflate streams are joined into the one zlib stream a
PNG's IDAT holds, as pigz joins gzip's: every band but the last ends with a sync flush (a byte
boundary and no final block), and the adler32 of the whole is the bands' checksums chained in
order. Each band starts a fresh 32 KB dictionary, which costs well under 1% of the size for bands
of hundreds of KB.

Every row uses the Paeth filter, which compresses photographs about as well as Pillow's per-row
choice (1.3% larger on the photo-like image of docs/benchmarks/png-cpu/, equal on noise) at a
fraction of its cost.
Paeth reads only the raw image (left, up, up-left), so a band is filtered on its own without
waiting for the band above. Pure: numpy and zlib, no torch.
"""

from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPES = {"L": 0, "RGB": 2, "RGBA": 6}  # 8 bits per channel
PAETH = 4
MIN_BAND_BYTES = 128 * 1024  # a few ms of work per band at least, so that threads pay for themselves
MAX_THREADS = 16


def default_threads() -> int:
    """The cores this process may run on, at most MAX_THREADS."""
    return max(1, min(MAX_THREADS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def paeth_rows(rows: np.ndarray, above: np.ndarray, channels: int) -> np.ndarray:
    """PNG's Paeth filter of `rows` ([n, width * channels] uint8) given the rows above each one,
    with a leading filter-type byte per row: the bytes a PNG's IDAT deflates."""
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = PAETH
    # First pixel: left and up-left are 0, so Paeth predicts `up`.
    out[:, 1 : channels + 1] = rows[:, :channels] - above[:, :channels]
    a = rows[:, :-channels].astype(np.int16)  # left
    b = above[:, channels:].astype(np.int16)  # up
    c = above[:, :-channels].astype(np.int16)  # up-left
    # p = a + b - c; the distances |p - a|, |p - b|, |p - c| without forming p.
    pa = np.abs(b - c)
    pb = np.abs(a - c)
    pc = np.abs(a + b - 2 * c)
    predicted = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c)).astype(np.uint8)
    out[:, channels + 1 :] = rows[:, channels:] - predicted
    return out


def _band(pixels: np.ndarray, start: int, stop: int, level: int, last: bool) -> tuple[bytes, bytes]:
    """One band of rows filtered and deflated (raw deflate); returns (compressed, filtered)."""
    _, width, channels = pixels.shape
    rows = pixels[start:stop].reshape(stop - start, width * channels)
    above = np.empty_like(rows)
    above[1:] = rows[:-1]
    above[0] = pixels[start - 1].reshape(-1) if start else 0
    raw = paeth_rows(rows, above, channels).tobytes()
    deflate = zlib.compressobj(level, zlib.DEFLATED, -15)
    body = deflate.compress(raw) + deflate.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return body, raw


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: Image.Image, pool: Executor | None = None, threads: int = 1, level: int = 1) -> bytes:
    """The image as PNG bytes (8-bit L, RGB or RGBA), its row bands encoded in `pool` when given,
    in up to `threads` bands."""
    if image.mode not in COLOUR_TYPES:
        raise ValueError(f"image mode {image.mode!r} is not one of {', '.join(COLOUR_TYPES)}")
    pixels = np.asarray(image).reshape(image.height, image.width, -1)
    height, width, _ = pixels.shape
    bands = max(1, min(threads, pixels.nbytes // MIN_BAND_BYTES, height))
    edges = np.linspace(0, height, bands + 1).astype(int).tolist()
    jobs = [(pixels, edges[i], edges[i + 1], level, i == bands - 1) for i in range(bands)]
    if pool is None or bands == 1:
        parts = [_band(*job) for job in jobs]
    else:
        parts = list(pool.map(_band, *zip(*jobs, strict=True)))
    checksum = 1
    for _, raw in parts:
        checksum = zlib.adler32(raw, checksum)
    # 0x78 0x01: deflate with a 32 KB window, the "fastest" level flag (informative only).
    stream = b"\x78\x01" + b"".join(body for body, _ in parts) + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, 8, COLOUR_TYPES[image.mode], 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


class PngEncoder:
    """encode_png with a thread pool kept for the server's lifetime."""

    def __init__(self, threads: int | None = None, level: int = 1) -> None:
        self.threads = threads or default_threads()
        self.level = level
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="png") if self.threads > 1 else None

    def __call__(self, image: Image.Image) -> bytes:
        return encode_png(image, self._pool, self.threads, self.level)
