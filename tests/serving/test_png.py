"""The output's PNG encoder (model/serving/png.py): every band joins into one valid stream, decoded by
Pillow to the very pixels written, at Pillow's size."""

from __future__ import annotations

import io
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from harness.images import photo_like
from model.serving.png import PngEncoder, encode_png, paeth_rows


def decoded(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image)


def paeth_by_the_spec(row: list[int], above: list[int], bpp: int) -> list[int]:
    """PNG specification 9.4, byte by byte."""
    out = []
    for i, value in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = above[i]
        c = above[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        predicted = a if pa <= pb and pa <= pc else b if pb <= pc else c
        out.append((value - predicted) % 256)
    return out


def test_paeth_filter_is_the_specifications() -> None:
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 256, (4, 3 * 7), dtype=np.uint8)
    above = rng.integers(0, 256, (4, 3 * 7), dtype=np.uint8)
    filtered = paeth_rows(rows, above, 3)
    assert (filtered[:, 0] == 4).all()
    for r in range(4):
        assert filtered[r, 1:].tolist() == paeth_by_the_spec(rows[r].tolist(), above[r].tolist(), 3)


@pytest.mark.parametrize(
    ("mode", "size"),
    [
        ("RGB", (1440, 1080)),
        ("RGB", (720, 720)),
        ("RGBA", (300, 200)),
        ("L", (2112, 912)),
        ("RGB", (1, 1)),
        ("RGB", (5, 3)),
    ],
)
@pytest.mark.parametrize("threads", [1, 4])
def test_pixels_come_back_exactly(mode: str, size: tuple[int, int], threads: int) -> None:
    rng = np.random.default_rng(2)
    channels = len(mode)
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze(-1 if channels == 1 else ())
    image = Image.fromarray(pixels, mode)
    with ThreadPoolExecutor(threads) as pool:
        data = encode_png(image, pool, threads)
    back = decoded(data)
    assert Image.open(io.BytesIO(data)).mode == mode
    np.testing.assert_array_equal(back, pixels)


def test_bands_join_into_one_stream_that_zlib_checks() -> None:
    """Several bands really are made, and their joined stream passes zlib's own adler32 check."""
    image = photo_like(1440, 1080)
    with ThreadPoolExecutor(8) as pool:
        data = encode_png(image, pool, threads=8)
    idat_at = data.index(b"IDAT")
    length = int.from_bytes(data[idat_at - 4 : idat_at], "big")
    stream = data[idat_at + 4 : idat_at + 4 + length]
    raw = zlib.decompress(stream)  # raises on a wrong checksum or a broken join
    assert len(raw) == 1080 * (1440 * 3 + 1)
    # A sync flush ends each band but the last with an empty stored block: 00 00 ff ff.
    assert stream.count(b"\x00\x00\xff\xff") >= 7
    np.testing.assert_array_equal(decoded(data), np.asarray(image))


def test_as_small_as_pillows_level_1_on_a_photo_like() -> None:
    image = photo_like(1440, 1080)
    ours = len(PngEncoder(threads=8)(image))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=False, compress_level=1)
    assert ours <= 1.02 * len(buffer.getvalue()), (ours, len(buffer.getvalue()))


def test_other_modes_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'P' is not one of L, RGB, RGBA"):
        encode_png(Image.new("P", (8, 8)))
