"""The placement rule (model/engine/placement/masks.py) on planted maps: from a prompt (the real
CLIP tokenizer of the tiny weights) and text-attention maps planted at each word's tokens (found
from the tokenizer's ids, not from the code under test), through the anchor recording, the
average across steps and the rule, to each reference's kind, its mask and what the logs say
(model/engine/placement/report.py).

The maps are made up, as a tiny random model's are: these tests pin the rule, not the quality of
placement with real weights (scripts/evaluate.py measures that where the weights are)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPTokenizer

from model.contract.prompt import parse_prompt
from model.engine.placement.binding import Binding, RegionConfig, bind_references
from model.engine.placement.masks import place
from model.engine.placement.report import coverage_lines
from model.engine.placement.state import RegionState
from model.engine.tokens import mention_positions
from model.engine.weights import SDXL_BASE

H = W = 16


@pytest.fixture(scope="module")
def tokenizer(tiny_weights: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(tiny_weights / SDXL_BASE.folder / "tokenizer", model_max_length=77)


def box(rows: slice, cols: slice, value: float = 1.0) -> torch.Tensor:
    m = torch.zeros(H, W)
    m[rows, cols] = value
    return m


# A person standing in the middle: head (rows 2-7) and body (rows 8-15), columns 5-10.
HEAD, BODY = box(slice(2, 8), slice(5, 11)), box(slice(8, 16), slice(5, 11))
PERSON = HEAD + BODY
# Two things side by side (a dog and a table, a cat and a sofa), and the top of the image.
LEFT, RIGHT = box(slice(4, 14), slice(1, 7)), box(slice(4, 14), slice(9, 15))
TOP = box(slice(0, 2), slice(0, 16))


def flat_noise(seed: int) -> torch.Tensor:
    """What a word with no region attends like: a little noise around a floor."""
    return 0.9 + 0.2 * torch.rand(H, W, generator=torch.Generator().manual_seed(seed))


class Planted:
    """A request's region state fed planted anchor maps, one step at a time."""

    def __init__(self, tokenizer: CLIPTokenizer, prompt: str, tags: list[str | None], **config: float) -> None:
        parsed = parse_prompt(prompt)
        self.tokens = tokenizer.convert_ids_to_tokens(tokenizer(parsed.text)["input_ids"])
        self.bindings = bind_references(tags, parsed, mention_positions(parsed, tokenizer))
        self.region = RegionState(self.bindings, RegionConfig(warmup_fraction=0.0, **config), 30, (H, W))

    @property
    def kinds(self) -> list[str]:
        return [b.kind.value for b in self.bindings]

    def step(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """One step whose anchor attention from each pixel to each of `maps`' words (all its
        tokens, as the tokenizer writes them: "ref" for the "ref" of "ref1") is that word's map;
        returns the masks it makes for the next step."""
        probs = torch.zeros(2, H * W, 77)  # two heads: the recording averages them
        for word, m in maps.items():
            positions = [p for p, token in enumerate(self.tokens) if token == f"{word}</w>"]
            assert positions, f"no token {word!r} in {self.tokens}"
            for p in positions:
                probs[:, :, p] = m.flatten()
        self.region.record(probs, H * W)
        self.region.end_step()
        assert self.region.weights is not None
        return self.region.weights

    def logs(self) -> list[str]:
        """The coverage lines once the step after applies the masks (it records nothing here)."""
        self.region.end_step()
        return coverage_lines(self.region)

    def notes(self) -> list[str]:
        """The lines that say more than a share."""
        return [line for line in self.logs() if " covers " not in line]


def covers(tag: str, mask: torch.Tensor, kind: str) -> str:
    return f"@{tag} covers {mask.mean().item():.0%} of the image ({kind})"


@pytest.mark.parametrize(
    ("prompt", "person", "clothing"), [("@woman in @dress", "woman", "dress"), ("@man in a @suit", "man", "suit")]
)
def test_clothing_is_worn_not_the_backdrop(tokenizer: CLIPTokenizer, prompt: str, person: str, clothing: str) -> None:
    """Before: the clothing was the place, applied everywhere but on the person. Now its map
    (stronger than the person's on the body) gives it the body, and since that lies on the
    person's map it is worn: it gets its own region only, and the background neither reference."""
    planted = Planted(tokenizer, prompt, [person, clothing])
    assert planted.kinds == ["subject", "place"]
    masks = planted.step({person: HEAD + 0.4 * BODY, clothing: BODY})
    assert torch.equal(masks[0], HEAD) and torch.equal(masks[1], BODY)
    assert not masks[:, PERSON == 0].any(), "a reference was applied to the background"
    assert planted.logs() == [
        covers(person, HEAD, "subject"),
        covers(clothing, BODY, "place"),
        f"@{clothing} lies on a subject (worn or held), so its reference applies to its own region, "
        "not to the backdrop",
    ]


@pytest.mark.parametrize(
    ("prompt", "tags"),
    [
        ("@dog under @table", ["dog", "table"]),
        ("@cat on @sofa", ["cat", "sofa"]),
        ("@woman near @car", ["woman", "car"]),
    ],
)
def test_an_object_beside_a_subject_gets_its_own_region_not_the_background(
    tokenizer: CLIPTokenizer, prompt: str, tags: list[str]
) -> None:
    """Before: "under", "on", "near" made the object the place, applied to all the background."""
    planted = Planted(tokenizer, prompt, tags)
    assert planted.kinds == ["subject", "subject"]
    masks = planted.step({tags[0]: LEFT, tags[1]: RIGHT})
    assert torch.equal(masks[0], LEFT) and torch.equal(masks[1], RIGHT)
    assert not masks[:, LEFT + RIGHT == 0].any(), "a reference was applied to the background"
    assert planted.logs() == [covers(tags[0], LEFT, "subject"), covers(tags[1], RIGHT, "subject")]


def test_a_place_among_subjects_is_the_backdrop_and_takes_what_no_tag_claims(tokenizer: CLIPTokenizer) -> None:
    """ "@woman in @park": the park's map is the top of the image (the trees), a little of it on
    the woman; it gets its region and the rest of what no tag claims, never the subjects' pixels."""
    planted = Planted(tokenizer, "@woman in @park with a @dog", ["park", "woman", "dog", None])
    assert planted.kinds == ["place", "subject", "subject", "global"]
    dog = box(slice(12, 16), slice(12, 16))
    masks = planted.step({"woman": PERSON, "park": TOP + 0.2 * PERSON, "dog": dog})
    assert torch.equal(masks[1], PERSON) and torch.equal(masks[2], dog)
    assert torch.equal(masks[0], 1 - PERSON - dog)  # its own region (the top) and the unclaimed rest
    assert torch.all(masks[3] == 1)  # the untagged reference: everywhere
    assert planted.logs() == [  # request order
        covers("park", 1 - PERSON - dog, "place"),
        covers("woman", PERSON, "subject"),
        covers("dog", dog, "subject"),
    ]


def test_a_place_alone_covers_the_whole_image_from_the_first_step(tokenizer: CLIPTokenizer) -> None:
    """ "a dog in @park": no tag claims any pixel, so the park is the whole image; as a global
    reference it is also on during the tag warm-up, as it would be without a tag."""
    planted = Planted(tokenizer, "a dog in @park", ["park"])
    assert planted.kinds == ["global"]
    region = RegionState(planted.bindings, RegionConfig(), 30, (H, W))
    assert region.tagged_off and torch.all(region.layer_masks(H * W, torch.device("cpu")) == 1)
    assert not region.records  # nothing to record


def test_an_opaque_tag_with_no_clear_region_applies_to_the_whole_image(tokenizer: CLIPTokenizer) -> None:
    """ "@chr1x" reads as "chr 1 x", words with no region: its map is flat. Min-max normalisation
    made a region of its noise; now it applies everywhere (as with no tag) and the logs say why,
    while @woman keeps her region. (An untagged reference first: the rule's flags are the tagged
    references', in their order.)"""
    planted = Planted(tokenizer, "@chr1x talking to @woman", [None, "chr1x", "woman"])
    assert planted.kinds == ["global", "subject", "subject"]
    masks = planted.step({"chr": flat_noise(0), "1": flat_noise(1), "x": flat_noise(2), "woman": RIGHT})
    assert torch.all(masks[:2] == 1) and torch.equal(masks[2], RIGHT)
    assert planted.notes() == [
        "@chr1x has no clear region in its attention map, so its reference applies to the whole image"
    ]


def test_an_opaque_place_keeps_off_the_subjects(tokenizer: CLIPTokenizer) -> None:
    """A place with no clear region is still the backdrop: it never paints over a subject."""
    planted = Planted(tokenizer, "@woman at @loc7", ["woman", "loc7"])
    masks = planted.step({"woman": PERSON, "loc": flat_noise(1), "7": flat_noise(2)})
    assert torch.equal(masks[0], PERSON) and torch.equal(masks[1], 1 - PERSON)
    assert planted.notes() == [
        "@loc7 has no clear region in its attention map, so its reference applies to what no other tag claims"
    ]


def test_tags_whose_maps_cannot_be_told_apart_apply_to_the_whole_image(tokenizer: CLIPTokenizer) -> None:
    """@ref1 and @ref2 both read as "ref" (and a digit, which attends nowhere in particular): their
    maps are the one blob of "ref". Splitting it by which is a hair higher would place each
    reference at random; instead both apply everywhere, and the logs say so."""
    planted = Planted(tokenizer, "@ref1 shaking hands with @ref2", ["ref1", "ref2"])
    blob = box(slice(4, 12), slice(2, 14))
    masks = planted.step({"ref": blob, "1": 0.1 * flat_noise(3), "2": 0.1 * flat_noise(4)})
    assert torch.all(masks == 1)
    assert planted.notes() == [
        "@ref1 and @ref2 cannot be told apart in their attention maps, so their references apply to the whole image"
    ]
    # The same tags whose words have maps of their own are placed: the tags alone decide nothing.
    apart = Planted(tokenizer, "@ref1 shaking hands with @ref2", ["ref1", "ref2"])
    masks = apart.step({"1": LEFT, "2": RIGHT})
    assert torch.equal(masks[0], LEFT) and torch.equal(masks[1], RIGHT)
    assert apart.notes() == []


def test_a_subject_and_a_place_that_cannot_be_told_apart_say_where_each_applies(tokenizer: CLIPTokenizer) -> None:
    planted = Planted(tokenizer, "@ref1 in @ref2", ["ref1", "ref2"])
    assert planted.kinds == ["subject", "place"]
    masks = planted.step({"ref": box(slice(4, 12), slice(2, 14))})
    assert torch.all(masks == 1)  # the place's fallback, what no other tag claims, is everything
    assert planted.notes() == [
        "@ref1 and @ref2 cannot be told apart in their attention maps, so @ref1's reference applies to the "
        "whole image and @ref2's to what no other tag claims"
    ]


def test_a_one_pixel_spike_neither_makes_a_region_nor_hides_one(tokenizer: CLIPTokenizer) -> None:
    """A map is smoothed over 3x3 pixels before its peak is read (as Attend-and-Excite does): a
    lone pixel far above the woman's region would otherwise be the peak that every pixel is
    divided by (her region falling under the threshold), and a lone pixel at half her level a
    region of its own."""
    planted = Planted(tokenizer, "@woman and @man", ["woman", "man"])
    woman = LEFT + box(slice(1, 2), slice(8, 9), 3.0) + box(slice(15, 16), slice(8, 9), 0.6)
    masks = planted.step({"woman": woman, "man": RIGHT})
    assert torch.equal(masks[0], LEFT) and torch.equal(masks[1], RIGHT)


def test_the_logs_describe_the_masks_that_were_applied(tokenizer: CLIPTokenizer) -> None:
    """The rule's notes come with the masks the latest step applied, as the shares do, not with
    the masks made after it (which only a next step or the refine pass would apply); and the refine
    pass, which applies the base pass's final masks, reports those masks' notes."""
    planted = Planted(tokenizer, "@chr1x talking to @woman", ["chr1x", "woman"], smoothing=0.0)
    planted.step({"chr": flat_noise(0), "1": flat_noise(1), "x": flat_noise(2), "woman": RIGHT})
    planted.step({"chr": LEFT, "woman": RIGHT})  # applies the masks of the flat map; makes new ones
    assert torch.equal(planted.region.weights[0], LEFT)
    unclear = "@chr1x has no clear region in its attention map, so its reference applies to the whole image"
    assert coverage_lines(planted.region) == [
        covers("chr1x", torch.ones(1), "subject"),
        covers("woman", RIGHT, "subject"),
        unclear,
    ]
    refine = RegionState.carried(planted.region, latent_hw=(2 * H, 2 * W), steps=2)
    refine.end_step()
    assert coverage_lines(refine) == [covers("chr1x", LEFT, "subject"), covers("woman", RIGHT, "subject")]
    base = Planted(tokenizer, "@chr1x talking to @woman", ["chr1x", "woman"])
    base.step({"chr": flat_noise(0), "1": flat_noise(1), "x": flat_noise(2), "woman": RIGHT})
    refine = RegionState.carried(base.region, latent_hw=(2 * H, 2 * W), steps=2)
    refine.end_step()
    assert coverage_lines(refine)[-1] == unclear


def test_one_odd_step_moves_the_masks_less_than_without_the_average(tokenizer: CLIPTokenizer) -> None:
    """Maps are averaged across steps, so the shares no longer jump: one step whose maps jump (the
    man's map on the woman's side) does not move the masks, where each step's own maps flip them;
    a layout that stays moved wins after a few steps."""
    smooth = Planted(tokenizer, "@woman and @man", ["woman", "man"])
    jumpy = Planted(tokenizer, "@woman and @man", ["woman", "man"], smoothing=0.0)
    for planted in (smooth, jumpy):
        for _ in range(3):
            planted.step({"woman": LEFT, "man": RIGHT})
    swapped = {"woman": RIGHT, "man": LEFT}
    assert torch.equal(smooth.step(swapped)[0], LEFT)  # one odd step: the woman stays left
    assert torch.equal(jumpy.step(swapped)[0], RIGHT)
    moves = 0
    while torch.equal(smooth.region.weights[0], LEFT):
        smooth.step(swapped)
        moves += 1
    assert 1 <= moves <= 3 and torch.equal(smooth.region.weights[0], RIGHT)


def test_the_shares_of_a_jittering_layout_vary_less_with_the_average(tokenizer: CLIPTokenizer) -> None:
    """A subject whose map grows and shrinks from step to step (as early steps' maps do): the
    logged share of each step's masks varies less with the average than without."""
    g = torch.Generator().manual_seed(5)
    spreads = {}
    for smoothing in (RegionConfig().smoothing, 0.0):
        planted = Planted(tokenizer, "@woman and @man", ["woman", "man"], smoothing=smoothing)
        shares = []
        for step in range(12):
            width = 3 + 4 * (step % 2)  # 3 or 7 columns
            woman = box(slice(2, 14), slice(0, width)) + 0.05 * torch.rand(H, W, generator=g)
            masks = planted.step({"woman": woman, "man": RIGHT})
            shares.append(masks[0].mean().item())
        spreads[smoothing] = max(shares[4:]) - min(shares[4:])
    assert spreads[RegionConfig().smoothing] < spreads[0.0] / 2, spreads


def test_no_pixel_has_two_tagged_owners_on_random_maps() -> None:
    """Whatever the maps: references placed in a region of their own never share a pixel, and
    each mask is 0 or 1."""
    bindings = [Binding(0, "a", "subject", (1,)), Binding(1, "b", "place", (2,)), Binding(2, "c", "subject", (3,))]
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        maps = torch.rand(3, H, W, generator=generator) ** 4
        result = place(bindings, maps, RegionConfig())
        assert set(result.masks.unique().tolist()) <= {0.0, 1.0}
        alone = ~result.unclear & ~result.alike.any(dim=1)  # in the competition
        subjects = result.masks[[0, 2]][alone[[0, 2]]]
        # The place, worn or the backdrop, in the competition or not, keeps off their regions.
        assert torch.all(subjects.sum(0) + result.masks[1] <= 1)
