"""@tag mentions in a prompt (model/contract/prompt.py): what is a mention, how the prompt is
rewritten for the text encoders, and which mention names the place. Pure: no model."""

from __future__ import annotations

import pytest

from model.contract.prompt import find_mentions, parse_prompt
from model.contract.request import check_fields
from tests.contract.test_request import req


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
