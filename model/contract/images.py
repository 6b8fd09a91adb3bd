"""Decode reference images safely: refuse local files, bombs and broken data; return upright RGB,
reduced to about what the image encoder reads.

Pure image logic (PIL), no torch.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import urllib.parse
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from model.contract.cache import LRUCache
from model.contract.errors import InputError, show
from model.contract.tables import (
    MAX_REFERENCE_PIXELS,
    MIN_REFERENCE_SIDE,
    REFERENCE_ASPECT_RANGE,
    REFERENCE_DECODE_SIDE,
    REFERENCE_SCHEMES,
)


def reference_field(index: int, tag: str | None) -> str:
    """How errors name a reference: `reference_images[1] (@woman)`."""
    return f"reference_images[{index}]" + (f" (@{tag})" if tag else "")


def display_uri(uri: str, limit: int = 80) -> str:
    """A reference URI as errors and logs may show it: no user:password, no query (signed URLs
    carry their tokens there), no fragment; a data: URI as its media type only; shortened."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return show(uri.split("@")[-1], limit)
    if parts.scheme.lower() == "data":
        return show(uri.split(",", 1)[0][:limit] + ",...", limit)
    host = parts.netloc.rsplit("@", 1)[-1]
    text = urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", "")) + ("?..." if parts.query else "")
    return show(text, limit)


def source_of(item: object) -> str:
    """How a reference is named in a ValidRequest: its URI without credentials, or its path."""
    return display_uri(item) if isinstance(item, str) else str(item)


def check_source(item: object, field: str) -> str | pathlib.Path:
    """Where to read a reference from: its http(s) or data: URI, which the serving layer fetches
    (model/serving/fetch.py), or a local file that an in-process caller (tests, benchmarks) passes
    as a path object.

    The server hands over every reference as a string (predict.py), so a request never names a
    local file: a string that is not such a URI, a local path or a file:// URI, is refused and
    never opened.
    """
    if isinstance(item, str):
        try:
            scheme = urllib.parse.urlsplit(item).scheme.lower()
        except ValueError:  # e.g. an unclosed IPv6 bracket
            scheme = ""
        if scheme in REFERENCE_SCHEMES:
            return item
        raise InputError(
            field,
            f"{display_uri(item)} is not an image URI: use an http(s) URL or a data: URI (local files are never read)",
        )
    if isinstance(item, os.PathLike):
        return pathlib.Path(os.fspath(item))
    raise InputError(field, f"{show(item)} is not an image URI: use an http(s) URL or a data: URI")


# EXIF orientations whose upright image swaps width and height (transpose, rotate 90 or 270).
TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is laid on white, 16-bit is scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" or image.mode in ("LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def check_size(width: int, height: int, field: str) -> None:
    """A reference's upright size against the side and aspect rules."""
    if min(width, height) < MIN_REFERENCE_SIDE:
        raise InputError(
            field,
            f"image is {width}x{height}; each side must be at least {MIN_REFERENCE_SIDE} pixels",
        )
    ratio = width / height
    low, high = REFERENCE_ASPECT_RANGE
    if not low <= ratio <= high:
        raise InputError(
            field,
            f"aspect ratio {ratio:.2f} ({width}x{height}) is outside the allowed range "
            f"{low} to {high} (width / height)",
        )


def reduce_to(image: Image.Image, side: int) -> Image.Image:
    """Box-reduce by the largest integer factor that keeps the shortest side at least `side`."""
    factor = min(image.size) // side
    return image.reduce(factor) if factor >= 2 else image


# A reference to decode: the bytes fetched for its URI, or a local file (in-process callers).
Source = bytes | pathlib.Path


def decode_reference(source: Source, field: str, side: int | None = REFERENCE_DECODE_SIDE) -> Image.Image:
    """Open, check and decode a reference into an upright RGB image whose shortest side is `side`
    to twice that (smaller images stay as they are; None: full size)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            width, height = image.size
            # Check the declared size before decoding a single pixel.
            if width * height > MAX_REFERENCE_PIXELS:
                raise InputError(
                    field,
                    f"image is {width}x{height} pixels; at most {MAX_REFERENCE_PIXELS:,} pixels are accepted",
                )
            image.seek(0)  # animated images: the first frame
            # The rules read the size the user sees: upright, as declared (not as reduced below).
            if image.getexif().get(ExifTags.Base.Orientation, 1) in TRANSPOSING_ORIENTATIONS:
                width, height = height, width
            check_size(width, height, field)
            if side is not None:
                image.draft(None, (side, side))  # a JPEG decodes at 1/2, 1/4 or 1/8 scale; others: no-op
            image.load()
            image = ImageOps.exif_transpose(image)  # phone photos: upright before use
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            field, f"image declares too many pixels ({exc}); at most {MAX_REFERENCE_PIXELS:,} are accepted"
        ) from None
    except UnidentifiedImageError:
        raise InputError(field, "is not a decodable image (PNG, JPEG, WebP, GIF, ...)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(field, f"image could not be decoded ({exc})") from None
    image = to_rgb(image)
    return image if side is None else reduce_to(image, side)


def file_key(source: Source, side: int | None) -> str:
    """The decoded-image cache's key: the reference's bytes (sha256) and the side it decodes to."""
    if isinstance(source, bytes):
        return f"{side}:{hashlib.sha256(source).hexdigest()}"
    with open(source, "rb") as file:
        return f"{side}:{hashlib.file_digest(file, 'sha256').hexdigest()}"


def image_bytes(image: Image.Image) -> int:
    """Memory a decoded image holds (the decoded-image cache's weight of an entry)."""
    return image.width * image.height * len(image.getbands())


def decode_cached(path: Source, field: str, side: int | None, cache: LRUCache[Image.Image] | None) -> Image.Image:
    """`decode_reference`, or the image a file with the same bytes decoded to before: a reference
    used again (the usual way to keep a character across prompts) costs the hash of its file, a
    few milliseconds for a 12 MP photo, instead of its decoding. Bytes that decoded once decode
    alike again and passed the same checks, so a hit skips nothing a miss would refuse; a file
    that fails is never kept. The cached image is shared: nothing downstream writes to it."""
    if cache is None:
        return decode_reference(path, field, side)
    try:
        key = file_key(path, side)
    except OSError:  # unreadable: decoding says so, naming the reference
        return decode_reference(path, field, side)
    image = cache.get(key)
    if image is None:
        image = decode_reference(path, field, side)
        cache.put(key, image)
    return image


def decode_references(
    files: Sequence[tuple[Source, str]],
    side: int | None = REFERENCE_DECODE_SIDE,
    cache: LRUCache[Image.Image] | None = None,
) -> list[Image.Image]:
    """`decode_cached` of each (path, field), each in its own thread: Pillow's decoders, its
    conversions and transposes, and hashlib release the GIL, so up to 3 phone photos decode at
    once rather than one after the other. Results and errors come in order: the first failing
    reference's error is the one raised, as when they are decoded one by one."""
    if len(files) < 2:
        return [decode_cached(path, field, side, cache) for path, field in files]
    with ThreadPoolExecutor(max_workers=len(files), thread_name_prefix="decode-reference") as pool:
        return list(pool.map(lambda file: decode_cached(file[0], file[1], side, cache), files))
