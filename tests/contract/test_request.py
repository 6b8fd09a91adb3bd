"""Stage 1 validation (model/contract/request.py): every field checked, errors naming the field, the
value and the rule. Pure: no model."""

from __future__ import annotations

import pytest

from model.contract.errors import InputError
from model.contract.request import Request, check_fields, check_seed


def req(**kw: object) -> Request:
    base: dict[str, object] = {"prompt": "a photo", "resolution": "1080p", "aspect_ratio": "16:9"}
    return Request(**(base | kw))  # type: ignore[arg-type]


def three(tags: list[str]) -> dict[str, object]:
    return {"reference_tags": tags, "reference_images": ["x"] * max(len(tags), 1)}


BAD = [
    ({"prompt": ""}, "prompt", "empty"),
    ({"prompt": "   \n"}, "prompt", "empty"),
    ({"prompt": "x" * 1001}, "prompt", "is 1001 characters; at most 1000 are allowed"),
    ({"resolution": "4k"}, "resolution", "720p, 1080p"),
    ({"aspect_ratio": "5:4"}, "aspect_ratio", "16:9, 9:16, 4:3, 3:4, 1:1, 21:9"),
    ({"seed": -1}, "seed", "0 to 4294967295"),
    ({"seed": 4294967296}, "seed", "0 to 4294967295"),
    ({"seed": 1.5}, "seed", "1.5 is not a whole number; use 0 to 4294967295"),
    ({"prompt": "\x00\u200b\u200d\ufeff"}, "prompt", "is empty (no visible characters)"),
    ({"reference_images": ["a", "b", "c", "d"]}, "reference_images", "at most 3"),
    ({"reference_tags": ["one", "two"], "reference_images": ["a"]}, "reference_tags", "2 tags given for 1"),
    (three(["ab"]), "reference_tags[0]", "'ab' is not a valid tag"),
    (three(["abcdefghijklmnop"]), "reference_tags[0]", "3 to 15"),
    (three(["ab_c"]), "reference_tags[0]", "letters or digits"),
    (three(["1abc"]), "reference_tags[0]", "starting with a letter"),
    (three(["woman", "woman"]), "reference_tags[1]", "repeats reference_tags[0]"),
    (
        {"prompt": "@dog in @park", **three(["park"])},
        "prompt",
        "@dog, which is not one of the reference tags; available: @park",
    ),
    ({"prompt": "@dog runs"}, "prompt", "available: none"),
    (
        {"prompt": "@Woman in @park", **three(["park", "woman"])},
        "prompt",
        "mentions @Woman, which is not one of the reference tags; available: @park, @woman "
        "(tags are case-sensitive: did you mean @woman?)",
    ),
]


@pytest.mark.parametrize(("kwargs", "field", "text"), BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_fields_name_field_value_and_rule(kwargs: dict, field: str, text: str) -> None:
    with pytest.raises(InputError) as info:
        check_fields(req(**kwargs))
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert text in str(info.value)


def test_a_whole_float_seed_is_that_int() -> None:
    """JSON does not tell 1 from 1.0: a client may send either (issue 36: 1.0 reached torch)."""
    assert check_seed(1.0) == 1 and type(check_seed(1.0)) is int
    assert check_seed(4294967295.0) == 4294967295


def test_good_request_passes() -> None:
    check_fields(req(prompt="@woman and @man in @park", **three(["park", "woman", "man"]), seed=0))
    check_fields(req(seed=4294967295, reference_images=["a", "b"], reference_tags=["first"]))
    check_fields(req(prompt="x" * 1000))  # Runway's limit, inclusive
