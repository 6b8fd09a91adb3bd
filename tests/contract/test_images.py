"""Reference decoding on real image files: refusals, odd formats, orientation."""

from __future__ import annotations

import functools
import io
import pathlib
import threading

import numpy as np
import pytest
from PIL import Image

from harness.images import photo_like
from model.contract import images
from model.contract.cache import LRUCache
from model.contract.errors import InputError
from model.contract.images import check_source, decode_reference, decode_references, image_bytes
from model.contract.tables import REFERENCE_DECODE_SIDE
from model.engine.pipeline import clip_processor
from tests.conftest import png_bytes
from tests.samples import (
    animated_gif,
    bomb_png,
    cmyk_jpeg,
    exif_rotated_jpeg,
    palette_png_with_transparency,
    png_16_bit,
)

FIELD = "reference_images[0] (@woman)"


def write(tmp_path: pathlib.Path, data: bytes, name: str = "ref") -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


REFUSED = [
    ("aspect 0.3", png_bytes((90, 300)), "aspect ratio 0.30"),
    ("aspect 2.5", png_bytes((500, 200)), "aspect ratio 2.50"),
    ("text file", b"hello, I am not an image\n", "not a decodable image"),
    ("truncated png", png_bytes((300, 300), "blue")[:200], "could not be decoded"),
    ("zero bytes", b"", "not a decodable image"),
    ("1x1", png_bytes((1, 1)), "at least 32 pixels"),
    ("bomb", bomb_png(), "at most 40,000,000"),
]


@pytest.mark.parametrize(("data", "text"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused_images_name_the_reference(tmp_path: pathlib.Path, data: bytes, text: str) -> None:
    with pytest.raises(InputError) as info:
        decode_reference(write(tmp_path, data), FIELD)
    assert str(info.value).startswith(FIELD + ": ")
    assert text in str(info.value)


def test_aspect_bounds_are_inclusive(tmp_path: pathlib.Path) -> None:
    assert decode_reference(write(tmp_path, png_bytes((100, 200))), FIELD).size == (100, 200)
    assert decode_reference(write(tmp_path, png_bytes((400, 200))), FIELD).size == (400, 200)


def test_cmyk_jpeg_becomes_rgb(tmp_path: pathlib.Path) -> None:
    image = decode_reference(write(tmp_path, cmyk_jpeg()), FIELD)
    assert image.mode == "RGB" and image.size == (120, 100)
    r, g, b = image.getpixel((60, 50))
    assert r > 200 and g < 60 and b < 60  # cyan-free, magenta+yellow = red


def test_16_bit_png_is_scaled_not_clipped(tmp_path: pathlib.Path) -> None:
    data = png_16_bit()
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    image = decode_reference(write(tmp_path, data), FIELD)
    assert image.mode == "RGB"
    assert abs(image.getpixel((5, 5))[0] - 128) <= 1


def test_palette_with_transparency_lies_on_white(tmp_path: pathlib.Path) -> None:
    out = decode_reference(write(tmp_path, palette_png_with_transparency()), FIELD)
    assert out.mode == "RGB" and out.getpixel((10, 10)) == (255, 255, 255)


def test_animated_gif_uses_first_frame(tmp_path: pathlib.Path) -> None:
    out = decode_reference(write(tmp_path, animated_gif()), FIELD)
    r, g, b = out.getpixel((50, 50))
    assert r > 200 and g < 50 and b < 50


def test_exif_rotated_jpeg_is_turned_upright(tmp_path: pathlib.Path) -> None:
    assert decode_reference(write(tmp_path, exif_rotated_jpeg()), FIELD).size == (100, 200)


@functools.cache
def photo(width: int, height: int, orientation: int | None = None, fmt: str = "JPEG") -> bytes:
    """The benchmark's photo-like picture with a textured patch and a hard edge added, stored as a
    phone would store it."""
    pixels = np.asarray(photo_like(width, height), dtype=np.int16)
    noise = np.random.default_rng(0).integers(-40, 41, (height // 4, width // 4, 1))
    pixels[height // 4 : height // 2, width // 4 : width // 2] += noise.astype(np.int16)
    pixels[:, width // 2 : width // 2 + 40] = 255
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, fmt, exif=exif.tobytes(), **({"quality": 90} if fmt == "JPEG" else {"compress_level": 1}))
    return buffer.getvalue()


def test_a_phone_photo_decodes_upright_at_about_the_encoders_need(tmp_path: pathlib.Path) -> None:
    """12 MP stored 4032x3024, shown rotated (orientation 6): decoded at 1/4 scale, upright."""
    image = decode_reference(write(tmp_path, photo(4032, 3024, orientation=6)), FIELD)
    assert image.mode == "RGB" and image.size == (756, 1008)
    assert REFERENCE_DECODE_SIDE <= min(image.size) < 2 * REFERENCE_DECODE_SIDE
    assert decode_reference(write(tmp_path, photo(4032, 3024, orientation=6)), FIELD, side=None).size == (3024, 4032)


def test_a_large_png_is_box_reduced_and_a_small_one_kept(tmp_path: pathlib.Path) -> None:
    assert decode_reference(write(tmp_path, png_bytes((2100, 1400))), FIELD).size == (1050, 700)
    kept = (2 * REFERENCE_DECODE_SIDE - 1, 2 * REFERENCE_DECODE_SIDE - 1)
    assert decode_reference(write(tmp_path, png_bytes(kept)), FIELD).size == kept


def test_rules_read_the_upright_declared_size_not_the_reduced_one(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InputError) as info:
        decode_reference(write(tmp_path, photo(4000, 1500, orientation=6)), FIELD)
    assert "aspect ratio 0.38 (1500x4000)" in str(info.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_the_reduced_decode_reaches_the_encoder_as_the_full_one_would(tmp_path: pathlib.Path, fmt: str) -> None:
    """The image encoder's input (224x224, from the processor the pipeline builds for h94's ViT-H)
    from the reduced decode against the full one: differences of a fraction of one 8-bit
    level on average, a couple of levels at most (JPEG re-encoding alone changes more)."""
    path = write(tmp_path, photo(4032, 3024, fmt=fmt))
    processor = clip_processor(224)
    reduced, full = (
        processor(images=[decode_reference(path, FIELD, side=side)], return_tensors="np").pixel_values[0]
        for side in (REFERENCE_DECODE_SIDE, None)
    )
    level = 1 / (255 * np.asarray(processor.image_std)[:, None, None])  # one 8-bit level, normalised
    levels = np.abs(reduced - full) / level
    assert levels.mean() < 0.5 and levels.max() <= 3, (levels.mean(), levels.max())


@pytest.mark.parametrize(
    "value", ["/etc/hostname", "file:///etc/hostname", "relative/ref.png", "ftp://host/ref.png", "http://[::1"]
)
def test_strings_are_refused_and_never_opened(value: str) -> None:
    with pytest.raises(InputError) as info:
        check_source(value, FIELD)
    assert "local files are never read" in str(info.value)


def test_uris_pass_as_text_and_path_objects_as_files(tmp_path: pathlib.Path) -> None:
    """A request's http(s) and data: URIs are handed on to be fetched; a path object (only an
    in-process caller has one: the server hands strings) is a local file."""
    for uri in ("https://example.com/woman.png", "HTTP://example.com/a.png", "data:image/png;base64,AAAA"):
        assert check_source(uri, FIELD) == uri
    path = write(tmp_path, png_bytes())
    assert check_source(path, FIELD) == path
    with pytest.raises(InputError, match="is not an image URI"):
        check_source(42, FIELD)


def test_a_refused_uri_is_shown_without_its_credentials() -> None:
    with pytest.raises(InputError) as info:
        check_source("ftp://user:hunter2@example.com/ref.png?token=s3cret", FIELD)
    assert "hunter2" not in str(info.value) and "s3cret" not in str(info.value) and "user" not in str(info.value)
    assert "ftp://example.com/ref.png?..." in str(info.value)


def test_decoding_bytes_and_decoding_their_file_agree(tmp_path: pathlib.Path) -> None:
    data = exif_rotated_jpeg()
    from_bytes, from_file = decode_reference(data, FIELD), decode_reference(write(tmp_path, data), FIELD)
    assert np.array_equal(np.asarray(from_bytes), np.asarray(from_file))


def test_references_decode_at_once_each_as_alone(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three references in three threads at once (each waits at a barrier that only three decodes
    running together pass), giving the very pixels of decoding each alone."""
    files = [
        (write(tmp_path, photo(4032, 3024, orientation=6), "phone"), "reference_images[0]"),
        (write(tmp_path, palette_png_with_transparency(), "palette"), "reference_images[1]"),
        (write(tmp_path, cmyk_jpeg(), "cmyk"), "reference_images[2]"),
    ]
    alone = [decode_reference(path, field) for path, field in files]
    together = threading.Barrier(len(files), timeout=30)

    def decode_together(path: pathlib.Path, field: str, side: int | None) -> Image.Image:
        together.wait()
        return decode_reference(path, field, side)

    monkeypatch.setattr(images, "decode_reference", decode_together)
    decoded = decode_references(files)
    assert [np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(alone, decoded, strict=True)] == [True] * 3


@pytest.mark.parametrize(("broken", "named"), [((1, 2), 1), ((0, 2), 0), ((2,), 2)])
def test_of_several_broken_references_the_first_is_named(
    tmp_path: pathlib.Path, broken: tuple[int, ...], named: int
) -> None:
    files = [
        (write(tmp_path, b"not an image" if i in broken else png_bytes((64, 64)), f"ref{i}"), f"reference_images[{i}]")
        for i in range(3)
    ]
    with pytest.raises(InputError) as info:
        decode_references(files)
    assert info.value.field == f"reference_images[{named}]"


def counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[pathlib.Path]:
    """Record each file that is really decoded (not taken from the decoded-image cache)."""
    decoded: list[pathlib.Path] = []
    real = images.decode_reference

    def decode(path: pathlib.Path, field: str, side: int | None = REFERENCE_DECODE_SIDE) -> Image.Image:
        decoded.append(path)
        return real(path, field, side)

    monkeypatch.setattr(images, "decode_reference", decode)
    return decoded


def test_a_file_sent_again_is_not_decoded_again(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cog downloads each request's references to new files: the same bytes in another file hit."""
    data = photo(4032, 3024, orientation=6)
    first, again = write(tmp_path, data, "first.jpg"), write(tmp_path, data, "again.jpg")
    alone = decode_reference(first, FIELD)
    decoded = counting_decodes(monkeypatch)
    cache: LRUCache[Image.Image] = LRUCache(64 * 2**20, weigh=image_bytes)
    [one] = decode_references([(first, FIELD)], cache=cache)
    [two, three] = decode_references([(again, FIELD), (first, FIELD)], cache=cache)
    assert decoded == [first]
    assert one is two is three
    assert np.array_equal(np.asarray(one), np.asarray(alone))
    assert cache.weight == image_bytes(one) == 756 * 1008 * 3


def test_other_bytes_or_another_side_are_decoded(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyed by the file's bytes: the same picture stored otherwise is decoded (the encoder's own
    cache, keyed by pixels, still finds it), and so is a decode to another side."""
    png = write(tmp_path, png_bytes((300, 300), "blue"), "a.png")
    jpeg = write(tmp_path, png_bytes((300, 300), "blue", fmt="JPEG"), "b.jpg")
    decoded = counting_decodes(monkeypatch)
    cache: LRUCache[Image.Image] = LRUCache(64 * 2**20, weigh=image_bytes)
    decode_references([(png, FIELD), (jpeg, FIELD)], cache=cache)
    decode_references([(png, FIELD)], side=None, cache=cache)
    decode_references([(png, FIELD)], side=None, cache=cache)
    # The first call decodes its two files in threads of their own, in either order.
    assert sorted(decoded[:2]) == sorted([png, jpeg]) and decoded[2:] == [png]
    assert len(cache) == 3


def test_a_refused_file_is_never_kept(tmp_path: pathlib.Path) -> None:
    cache: LRUCache[Image.Image] = LRUCache(64 * 2**20, weigh=image_bytes)
    path = write(tmp_path, png_bytes((500, 200)))
    for _ in range(2):
        with pytest.raises(InputError, match=r"aspect ratio 2\.50"):
            decode_references([(path, FIELD)], cache=cache)
    missing = tmp_path / "gone.png"
    with pytest.raises(InputError, match=r"reference_images\[0\] \(@woman\): image could not be decoded"):
        decode_references([(missing, FIELD)], cache=cache)
    assert len(cache) == 0 and cache.weight == 0
