"""Stage 1 validation and @tag parsing: pure logic, no model."""

from __future__ import annotations

import pytest

from model.contract.errors import InputError
from model.contract.prompt import find_mentions, parse_prompt
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


def test_email_is_not_a_mention() -> None:
    assert find_mentions("write to a@b.com or x.y@host.org") == []
    check_fields(req(prompt="mail me at someone@example.com"))


@pytest.mark.parametrize(
    ("prompt", "text", "spans"),
    [
        ("@woman walks", "woman walks", [("woman", 0, 5)]),
        ("portrait of @woman's dog", "portrait of woman's dog", [("woman", 12, 17)]),
        ("@man, @man and @park.", "man, man and park.", [("man", 0, 3), ("man", 5, 8), ("park", 13, 17)]),
        ("(@cat2)", "(cat2)", [("cat2", 1, 5)]),
        ("no tags @ all", "no tags @ all", []),
    ],
)
def test_parse_prompt_rewrites_and_keeps_spans(prompt: str, text: str, spans: list) -> None:
    parsed = parse_prompt(prompt)
    assert parsed.text == text
    assert [(m.tag, m.start, m.end) for m in parsed.mentions] == spans
    for m in parsed.mentions:
        assert parsed.text[m.start : m.end] == m.tag


@pytest.mark.parametrize(
    ("prompt", "places"),
    [
        ("@woman and @man standing in @park", {"park"}),  # Replicate's example
        ("@woman reading in the @park", {"park"}),
        ("@man at a busy @cafe", {"cafe"}),
        ("@woman In The @park", {"park"}),  # case does not matter
        ("@woman cooking in her @kitchen", {"kitchen"}),
        ("@woman walking in the city's @park", {"park"}),
        ("@man sitting in a sun-lit @cafe", {"cafe"}),
        ("@man sitting on a sun-lit @bench", set()),  # "on" relates two things: the bench is an object
        ("@woman inside @house and within the @garden", {"house", "garden"}),
        ("@man in the @park with @dog", {"park"}),  # "with" makes the dog a subject
        ("@dog under @table", set()),  # "under" relates two things: the table is an object
        ("@woman in sunny @park", set()),  # a word with no determiner before it: a subject
        ("at night @woman walks in the @rain", {"rain"}),  # not "at night @woman"
        ("in the end, @woman smiles", set()),  # the comma ends the phrase
        ("portrait of @woman in the @park", {"park"}),
        ("@park in the morning, @woman in it", set()),  # the first mention decides
        ("@woman holding @cup", set()),
        ("@woman within @park", {"park"}),
        ("a cabin near the old @lake", set()),
        ("@woman and the @man", set()),
        ("@man on the left, @woman on the right", set()),
        ("a parrot over the @woman's shoulder", set()),  # a possessive names the owner
        ("a cat on @man's lap in the @kitchen", {"kitchen"}),
        ("@woman standing in front of the @house", {"house"}),
        ("@man in  front\tof @castle", {"castle"}),  # any spaces between the words
        ("@woman outside a tiny @cafe", {"cafe"}),
        ("@man walking along the @beach", {"beach"}),
        ("@woman asleep beneath @tree", set()),
        ("@cat on @sofa", set()),
        ("@woman near @car", set()),
        ("a bridge over the @river", set()),
        ("@woman in @dress", {"dress"}),  # a candidate: its map decides whether it is worn or the backdrop
        ("@man in a @suit", {"suit"}),
        ("@woman standing next to @man", set()),  # said of people: both stay subjects
        ("@woman behind @man", set()),
        ("@woman with her arms around @man", set()),
        ("the front of @house", set()),  # "front of" alone is no place word
    ],
)
def test_a_mention_after_a_place_word_names_the_place(prompt: str, places: set[str]) -> None:
    parsed = parse_prompt(prompt)
    assert {tag for tag in parsed.mentioned_tags() if parsed.names_a_place(tag)} == places
