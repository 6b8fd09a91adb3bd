"""Bad and awkward input through the real Cog server, one table: each case ends in a 422 or a
failed prediction whose error names the field and the rule, or in an image of the exact size when
the input is merely unusual; either way the next valid prediction succeeds."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import pytest
import requests

from harness.server import CogServer
from tests.conftest import data_uri, image_from_data_uri, png_bytes
from tests.samples import (
    animated_gif,
    bomb_png,
    cmyk_jpeg,
    exif_rotated_jpeg,
    palette_png_with_transparency,
    png_16_bit,
)

TAG_RULE = "is not a valid tag: 3 to 15 letters or digits, starting with a letter"
PNG = data_uri(png_bytes((256, 256), "teal"))
NEXT = {"prompt": "the next one", "resolution": "720p", "aspect_ratio": "16:9", "seed": 1}


def one_ref(data: bytes, mime: str = "image/png", **extra: object) -> dict:
    return {"prompt": "@woman waves", "reference_tags": ["woman"], "reference_images": [data_uri(data, mime)], **extra}


@dataclass(frozen=True)
class Case:
    name: str
    inputs: dict
    # "422" (refused by the schema), "failed" (refused by the model) or "succeeded".
    outcome: str
    # Substrings the error must contain: the field, the value or rule. For "succeeded", the size.
    expect: tuple = field(default=())


CASES = [
    Case("missing prompt", {"resolution": "720p"}, "422", ("prompt",)),
    Case("blank prompt", {"prompt": "   "}, "failed", ("prompt: '   ' is empty",)),
    Case("empty prompt", {"prompt": ""}, "failed", ("prompt: '' is empty",)),
    Case("prompt of the wrong type", {"prompt": 42}, "422", ("prompt",)),
    Case("prompt over 1000 characters", {"prompt": "a " * 501}, "failed", ("is 1002 characters; at most 1000",)),
    Case("unknown resolution", {"prompt": "x", "resolution": "4k"}, "422", ("resolution", "4k")),
    Case("unknown aspect_ratio", {"prompt": "x", "aspect_ratio": "5:4"}, "422", ("aspect_ratio", "5:4")),
    # What `cog predict -i reference_images=@a.jpg` sends: one file as a string, not a list of one.
    Case("one image not in a list", {"prompt": "x", "reference_images": PNG}, "422", ("reference_images",)),
    Case(
        "4 images",
        {"prompt": "x", "reference_images": [PNG] * 4},
        "failed",
        ("reference_images: 4 images given; at most 3 are allowed",),
    ),
    Case(
        "tag too short",
        {**one_ref(png_bytes()), "reference_tags": ["ab"]},
        "failed",
        ("reference_tags[0]: 'ab'", TAG_RULE),
    ),
    Case(
        "tag too long",
        {**one_ref(png_bytes()), "reference_tags": ["abcdefghijklmnop"]},
        "failed",
        ("reference_tags[0]: 'abcdefghijklmnop'", TAG_RULE),
    ),
    Case(
        "tag not alphanumeric", {**one_ref(png_bytes()), "reference_tags": ["wo-man"]}, "failed", ("'wo-man'", TAG_RULE)
    ),
    Case(
        "tag starts with a digit",
        {**one_ref(png_bytes()), "reference_tags": ["1woman"]},
        "failed",
        ("'1woman'", TAG_RULE),
    ),
    Case(
        "duplicated tags",
        {"prompt": "@woman", "reference_tags": ["woman", "woman"], "reference_images": [PNG, PNG]},
        "failed",
        ("reference_tags[1]: 'woman' repeats reference_tags[0]; tags must be unique",),
    ),
    Case(
        "more tags than images",
        {"prompt": "@woman", "reference_tags": ["woman", "man"], "reference_images": [PNG]},
        "failed",
        ("reference_tags: 2 tags given for 1 image(s)",),
    ),
    Case(
        "mention of an unknown tag",
        {"prompt": "@dog runs", "reference_tags": ["cat"], "reference_images": [PNG]},
        "failed",
        ("prompt: mentions @dog, which is not one of the reference tags; available: @cat",),
    ),
    Case("mention with no references", {"prompt": "@dog runs"}, "failed", ("prompt: mentions @dog", "available: none")),
    Case("reference aspect 0.3", one_ref(png_bytes((90, 300))), "failed", ("reference_images[0] (@woman)", "0.30")),
    Case("reference aspect 2.5", one_ref(png_bytes((500, 200))), "failed", ("reference_images[0] (@woman)", "2.50")),
    Case(
        "a text file",
        one_ref(b"hello, I am not an image\n", "text/plain"),
        "failed",
        ("reference_images[0] (@woman)", "not a decodable image"),
    ),
    Case(
        "a truncated PNG",
        one_ref(png_bytes((300, 300), "blue")[:200]),
        "failed",
        ("reference_images[0] (@woman)", "could not be decoded"),
    ),
    Case("a zero-byte file", one_ref(b""), "failed", ("reference_images[0] (@woman)", "not a decodable image")),
    Case("a 1x1 image", one_ref(png_bytes((1, 1))), "failed", ("reference_images[0] (@woman)", "at least 32 pixels")),
    Case("a decompression bomb", one_ref(bomb_png()), "failed", ("reference_images[0] (@woman)", "at most 40,000,000")),
    Case(
        "a local path",
        {"prompt": "x", "reference_images": ["/etc/hostname"]},
        "failed",
        ("reference_images[0]", "local files are never read"),
    ),
    Case(
        "a file:// URI",
        {"prompt": "x", "reference_images": ["file:///etc/hostname"]},
        "failed",
        ("reference_images[0]", "local files are never read"),
    ),
    Case("seed below 0", {"prompt": "x", "seed": -1}, "failed", ("seed: -1 is out of range; use 0 to 4294967295",)),
    Case(
        "seed above 4294967295",
        {"prompt": "x", "seed": 4294967296},
        "failed",
        ("seed: 4294967296 is out of range; use 0 to 4294967295",),
    ),
    Case("seed of the wrong type", {"prompt": "x", "seed": "lucky"}, "422", ("seed",)),
    Case("seed 1.5", {"prompt": "x", "seed": 1.5}, "422", ("seed", '1.5 is not of type \\"integer\\"')),
    Case(
        "a prompt of NUL and zero-width characters",
        {"prompt": "\x00\u200b\u200d"},
        "failed",
        ("prompt: '\\x00\\u200b\\u200d' is empty (no visible characters)",),
    ),
    Case("tags not a list", {"prompt": "x", "reference_tags": "woman"}, "422", ("reference_tags",)),
    # Unusual but fine: each gives an image of the exact size.
    Case("seed 1.0 (JSON's 1)", {"prompt": "x", "seed": 1.0, "aspect_ratio": "1:1"}, "succeeded", ((720, 720),)),
    Case("a CMYK JPEG", one_ref(cmyk_jpeg(), "image/jpeg"), "succeeded", ((1280, 720),)),
    Case("a 16-bit PNG", one_ref(png_16_bit()), "succeeded", ((1280, 720),)),
    Case("a palette PNG with transparency", one_ref(palette_png_with_transparency()), "succeeded", ((1280, 720),)),
    Case("an animated GIF", one_ref(animated_gif(), "image/gif"), "succeeded", ((1280, 720),)),
    Case("an EXIF-rotated JPEG", one_ref(exif_rotated_jpeg(), "image/jpeg"), "succeeded", ((1280, 720),)),
    Case(
        "a 1000-character prompt (4 windows of 77 tokens)",
        {"prompt": ("a lighthouse on a cliff at dusk, " * 31)[:1000], "resolution": "720p", "aspect_ratio": "1:1"},
        "succeeded",
        ((720, 720),),
    ),
    Case(
        "a prompt in Chinese with emoji",
        {"prompt": "一只猫坐在窗台上 🐱🌙, 水彩画风格", "resolution": "720p", "aspect_ratio": "9:16"},
        "succeeded",
        ((720, 1280),),
    ),
]


def test_the_table_covers_at_least_30_cases() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_ends_clearly_and_the_next_prediction_succeeds(cog_server: CogServer, case: Case) -> None:
    response = cog_server.predict({"resolution": "720p", "aspect_ratio": "16:9", "seed": 3, **case.inputs})
    if case.outcome == "422":
        assert response.status_code == 422, response.text
        for text in case.expect:
            assert text in response.text, response.text
    else:
        body = response.json()
        assert response.status_code == 200 and body["status"] == case.outcome, body
        if case.outcome == "failed":
            for text in case.expect:
                assert text in body["error"], body["error"]
        else:
            assert image_from_data_uri(body["output"]).size == case.expect[0]
    after = cog_server.predict(NEXT).json()
    assert after["status"] == "succeeded", after
    assert base64.b64decode(after["output"].split(",", 1)[1])[:4] == b"\x89PNG"


def test_a_reference_url_that_cannot_be_fetched_fails_and_names_it(cog_server: CogServer) -> None:
    """127.0.0.1 port 9 (discard) refuses (the tests' servers may fetch from loopback): the model's
    own download (model/serving/fetch.py) fails before any model work, naming the field and the URL."""
    url = "http://127.0.0.1:9/woman.png"
    response = cog_server.predict({"prompt": "@woman", "reference_tags": ["woman"], "reference_images": [url]})
    body = response.json()
    assert response.status_code == 200 and body["status"] == "failed", body
    assert "127.0.0.1" in body["error"] and "/woman.png" in body["error"], body["error"]
    assert "reference_images[0] (@woman)" in body["error"], body["error"]
    assert cog_server.predict(NEXT).json()["status"] == "succeeded"


def test_unknown_input_fields_are_refused(cog_server: CogServer) -> None:
    response = cog_server.predict({"prompt": "x", "num_outputs": 4})
    assert response.status_code in (200, 422), response.text
    if response.status_code == 200:  # accepted and ignored: then it must still be a normal image
        assert response.json()["status"] == "succeeded"
    else:
        assert "num_outputs" in response.text
    requests.get(f"{cog_server.url}/health-check", timeout=10).raise_for_status()
