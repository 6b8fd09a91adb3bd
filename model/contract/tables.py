"""The tables of the interface: output sizes, limits, defaults. Each exists once, here.

Pure data: no torch, no PIL.
"""

from __future__ import annotations

# Output pixel size (width, height) for each (resolution, aspect_ratio), as Runway's Gen-4 Image
# API defines them. The output must have exactly these dimensions.
OUTPUT_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "720p": {
        "16:9": (1280, 720),
        "9:16": (720, 1280),
        "4:3": (960, 720),
        "3:4": (720, 960),
        "1:1": (720, 720),
        "21:9": (1680, 720),
    },
    "1080p": {
        "16:9": (1920, 1080),
        "9:16": (1080, 1920),
        "4:3": (1440, 1080),
        "3:4": (1080, 1440),
        "1:1": (1080, 1080),
        "21:9": (2112, 912),
    },
}

RESOLUTIONS: tuple[str, ...] = ("720p", "1080p")
ASPECT_RATIOS: tuple[str, ...] = ("16:9", "9:16", "4:3", "3:4", "1:1", "21:9")
DEFAULT_RESOLUTION = "1080p"
DEFAULT_ASPECT_RATIO = "16:9"

MAX_REFERENCES = 3
# Runway's API takes prompts of at most 1000 characters; the hosted model refuses longer ones.
MAX_PROMPT_CHARS = 1000
# CLIP reads windows of 77 tokens (start, 75 of text, end). A longer prompt is read in up to this
# many consecutive windows, their outputs concatenated: 300 tokens of text. 1000 characters of
# English are about 200 to 250 tokens; the cap bounds what an unusual script can cost a request.
MAX_PROMPT_WINDOWS = 4
TAG_PATTERN = r"^[A-Za-z][A-Za-z0-9]{2,14}$"
TAG_RULE = "3 to 15 letters or digits, starting with a letter"
# A reference's width / height must lie in this closed range.
REFERENCE_ASPECT_RANGE: tuple[float, float] = (0.5, 2.0)
# Smallest side a reference may have: below this the image encoder sees noise, not a subject.
MIN_REFERENCE_SIDE = 32
# Largest decoded reference, in pixels: guards against decompression bombs (a few-KB PNG that
# declares 30000x30000 pixels). 40 MP admits any camera photo.
MAX_REFERENCE_PIXELS = 40_000_000
# Default cap on one reference's download, in bytes as decoded (after any Content-Encoding): a
# MAX_REFERENCE_PIXELS image stored uncompressed at 8 bits per RGB channel (a BMP, a PNG of
# noise); a camera's JPEG or HEIC of that many pixels is a fraction of it.
MAX_REFERENCE_BYTES = 3 * MAX_REFERENCE_PIXELS
# References are decoded down to about this shortest side (at least this, below twice this): the
# image encoder reads 224x224 (h94's ViT-H, resized by its CLIPImageProcessor), and a 12 MP phone
# photo decoded in full costs the host about 10x more (decode, hash, resize). JPEGs decode at a
# reduced DCT scale, other formats are box-reduced by an integer factor: Pillow's own two-step
# resize (`reducing_gap`), which leaves 3x the target to the final resize so that the result is
# indistinguishable from resizing the full image (tests/contract/test_images.py measures it).
REFERENCE_DECODE_SIDE = 3 * 224
# Runway's API accepts seeds 0..4294967295 (32-bit unsigned).
SEED_RANGE: tuple[int, int] = (0, 4_294_967_295)
# Schemes a reference image may arrive with, fetched by model/serving/fetch.py; any other string
# (a local path, file://) is refused so that the server never reads local files.
REFERENCE_SCHEMES: tuple[str, ...] = ("http", "https", "data")


def output_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(width, height) of the output for a validated resolution and aspect ratio."""
    return OUTPUT_SIZES[resolution][aspect_ratio]


def parse_entries(spec: str) -> list[tuple[str, str]]:
    """Ratio-table entries named in text: `all`, a resolution (`720p`: its six), or a comma list
    of `RESOLUTION ASPECT` items (`1080p 16:9,720p 1:1`). Raises ValueError naming the unknown ones."""
    every = [(resolution, aspect) for resolution, sizes in OUTPUT_SIZES.items() for aspect in sizes]
    spec = spec.strip()
    if spec == "all":
        return every
    if spec in OUTPUT_SIZES:
        return [entry for entry in every if entry[0] == spec]
    wanted = [tuple(item.split()) for item in spec.split(",")]
    unknown = [" ".join(entry) for entry in wanted if entry not in every]
    if unknown:
        raise ValueError(
            f"unknown entries {unknown}: use all, {', '.join(RESOLUTIONS)} or items such as '1080p 4:3,720p 1:1' "
            f"(resolutions {', '.join(RESOLUTIONS)}; aspect ratios {', '.join(ASPECT_RATIOS)})"
        )
    return list(dict.fromkeys(wanted))  # type: ignore[arg-type]


def ratio_label(resolution: str, aspect_ratio: str) -> str:
    """Runway's `ratio` string for an entry, e.g. '1440:1080'."""
    width, height = output_size(resolution, aspect_ratio)
    return f"{width}:{height}"
