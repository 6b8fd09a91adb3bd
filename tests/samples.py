"""Real image files of the awkward kinds a public server receives, built in memory."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from tests.conftest import png_bytes


def encoded(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def bomb_png() -> bytes:
    """A real 64x64 PNG whose header is rewritten to declare 30000x30000 pixels (a few KB)."""
    data = bytearray(png_bytes((64, 64)))
    ihdr = bytearray(data[12:29])  # "IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", 30000, 30000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def cmyk_jpeg() -> bytes:
    return encoded(Image.new("CMYK", (120, 100), (0, 255, 255, 0)), "JPEG")


def png_16_bit() -> bytes:
    return encoded(Image.fromarray(np.full((100, 100), 32768, dtype=np.uint16)), "PNG")


def palette_png_with_transparency() -> bytes:
    image = Image.new("P", (100, 100), 0)
    image.putpalette([0, 0, 0] * 256)
    return encoded(image, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (100, 100), c) for c in ("red", "blue", "green")]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def exif_rotated_jpeg() -> bytes:
    """200x100 pixels stored, to be shown rotated 90 degrees (EXIF orientation 6): 100x200."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(Image.new("RGB", (200, 100), "red"), "JPEG", exif=exif.tobytes())
