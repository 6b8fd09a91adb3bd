"""scripts/evaluate.py: end to end on the session's tiny weights (the report, its matrices and its
images), and its measuring parts on known inputs: the bootstrap, the pairing, where a region lies
on the output and how much its view looks like a reference (the tiny weights' real CLIP encoder)."""

from __future__ import annotations

import io
import json
import re
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPVisionModelWithProjection

from harness.images import photo_like
from model.contract.prompt import parse_prompt
from model.contract.request import Request
from model.engine.pipeline import clip_processor
from model.engine.placement.binding import Binding, Kind
from model.engine.plan import Plan, plan_for
from model.engine.weights import IMAGE_ENCODER_SUBFOLDER, IP_ADAPTER
from model.serving.service import ImageService
from scripts import evaluate
from scripts.eval.regions import ClipScorer, mask_on_output, masked_view
from scripts.eval.render import Condition, Plain, Rendered, make_reference, render, render_case
from scripts.eval.run import load_service, score_case, weights_folder
from scripts.eval.scores import Score, leakage_matrix, summary
from scripts.eval.stats import bootstrap_ci, paired_difference
from scripts.eval.suite import CASES, DEFAULT_ENTRY, REFERENCE_ENTRY, REFERENCE_KEYS, REFERENCES, SUITE, Case
from tests.conftest import data_uri, png_bytes, small_plans

E2E_CASES = ("opaque", "three")  # 1 and 3 tags: an opaque tag; two people in a place, in another order


@pytest.fixture(scope="module")
def report(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One evaluation on the tiny weights: 2 cases, 1 seed, 2 steps, at a 36th of the pixels."""
    out = tmp_path_factory.mktemp("evaluation")
    argv = ["--tiny-weights-dir", str(tiny_weights), "--seeds", "1", "--steps", "2", "--device", "cpu"]
    with small_plans(6):
        return evaluate.main([*argv, "--cases", ",".join(E2E_CASES), "--out", str(out)])


def test_the_report_says_tiny_random_and_has_a_matrix_per_condition(report: Path) -> None:
    text = report.read_text()
    results = json.loads((report.parent / "results.json").read_text())
    assert "**Weights: TINY RANDOM: numbers meaningless.**" in text
    assert "Machine: CPU" in text
    number = r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]"
    for condition in Condition:
        assert re.search(rf"^\| {condition} \| {len(E2E_CASES)} \| \d+\.\d\d \| ", text, re.M), (
            f"no timing per image of {condition}"
        )
        section = text.split(f"## Leakage matrix: {condition}\n", 1)[1].split("\n## ", 1)[0]
        # Rows of the references the three cases tag (woman, man, park): a number in every column
        # but the last (its own reference outside its region), which has none only where each of
        # its regions is the whole image (the rule's fallback, frequent on tiny random maps).
        for ref in ("woman", "man", "park"):
            row = re.search(rf"^\| {ref} \(n=(\d+)\) \|(.*)\|$", section, re.M)
            assert row and int(row[1]) > 0, section
            *cells, outside = (cell.strip() for cell in row[2].split("|"))
            assert all(re.fullmatch(number, cell) for cell in cells), row[0]
            mine = [s for s in results["scores"] if (s["condition"], s["ref"]) == (condition, ref)]
            whole = all(s["outside"] is None for s in mine)
            assert (outside == "–") if whole else re.fullmatch(number, outside), (row[0], whole)
        assert re.search(r"^\| raincoat \(n=0\) \| – \|", section, re.M), "an untagged reference has no numbers"
    assert re.search(rf"^\| localized − plain \| {number} \|", text, re.M)
    for case in E2E_CASES:
        assert f"`{CASES[case].prompt}`" in text


def test_the_report_numbers_are_its_scores(report: Path) -> None:
    """results.json holds every tag of every case in each condition, paired (same keys and same
    regions in all three), and the summary is the mean of those scores."""
    results = json.loads((report.parent / "results.json").read_text())
    assert results["weights"] == "tiny random"
    scores = [Score(**{**s, "present": tuple(s["present"])}) for s in results["scores"]]
    tagged = sum(len(CASES[c].tags) for c in E2E_CASES)
    assert len(scores) + 3 * len(results["unscored"]) == 3 * tagged
    by_condition = {c: {s.key: s for s in scores if s.condition == c} for c in map(str, Condition)}
    keys = [set(v) for v in by_condition.values()]
    assert keys[0] == keys[1] == keys[2] and keys[0]
    for key in keys[0]:
        assert len({by_condition[c][key].area for c in by_condition}) == 1, "the conditions' regions differ"
    text = report.read_text()
    for condition in map(str, Condition):
        own = [s.own_inside for s in by_condition[condition].values()]
        assert results["summary"][condition]["own ref inside"]["mean"] == pytest.approx(np.mean(own))
        # The tables are these scores' (the bootstrap is seeded: the same intervals again).
        row = " | ".join("–" if v is None else str(v) for v in summary(scores, condition).values())
        assert f"| {condition} | {row} |" in text
        section = text.split(f"## Leakage matrix: {condition}\n", 1)[1].split("\n## ", 1)[0]
        for ref, cells in leakage_matrix(scores, condition).items():
            n = next((c.n for c in cells.values() if c is not None), 0)
            assert f"| {ref} (n={n}) | " + " | ".join("–" if c is None else str(c) for c in cells.values()) in section
    # The localized run's kinds: the place of "three" is its place.
    park = next(s for s in scores if s.case == "three" and s.tag == "park")
    assert park.kind == "place"


def test_the_report_writes_every_image(report: Path) -> None:
    out = report.parent
    assert sorted(p.stem for p in (out / "references").iterdir()) == sorted(REFERENCE_KEYS)
    assert len(list((out / "images").glob("*.png"))) == 3 * len(E2E_CASES)
    assert len(list((out / "overlays").glob("*.png"))) == len(E2E_CASES)
    with Image.open(out / "grid.png") as grid:
        assert grid.height >= len(E2E_CASES) * 192 and grid.width >= 4 * 192
    assert "![grid](grid.png)" in report.read_text()


# The three conditions, through the server's own generation.


@pytest.fixture(scope="module")
def service(tiny_weights: Path) -> ImageService:
    return load_service(tiny_weights, steps=2, device="cpu")


def pixels(image: Image.Image | Path) -> np.ndarray:
    with Image.open(image) if isinstance(image, Path) else nullcontext(image) as opened:
        return np.asarray(opened.convert("RGB"), dtype=np.int16)


def test_references_and_the_localized_run_are_what_the_server_makes(service: ImageService) -> None:
    """A reference is the server's output for its prompt and seed without references; the
    localized condition is the server's output for the case's request, the text-only one its
    output for the same text without references."""
    with small_plans(6):
        reference = REFERENCES[0]
        made = make_reference(service, reference, plan_for(*REFERENCE_ENTRY))
        served = service.predict(Request(reference.prompt, *REFERENCE_ENTRY, seed=reference.seed))
        assert (pixels(made.image) == pixels(served)).all()
        case = CASES["two-names"]
        images = {"woman": photo_like(96, 96, seed=1), "man": photo_like(96, 96, seed=2)}
        outputs = render_case(service, case, images, 5, plan_for(*DEFAULT_ENTRY), Plain.DIFFUSERS)
        files = []
        for _, ref in case.tags:
            buffer = io.BytesIO()
            images[ref].save(buffer, "PNG")
            files.append(data_uri(buffer.getvalue()))
        tags = [tag for tag, _ in case.tags]
        served = service.predict(
            Request(case.prompt, *DEFAULT_ENTRY, reference_tags=tags, reference_images=files, seed=5)
        )
        # Text only: the server's output for the prompt's text (tags as their words), no reference.
        text_only = service.predict(Request(parse_prompt(case.prompt).text, *DEFAULT_ENTRY, seed=5))
    localized = outputs[Condition.LOCALIZED]
    assert (pixels(localized.image) == pixels(served)).all()
    assert localized.masks is not None and localized.masks.shape[0] == 2
    assert [b.tag for b in localized.bindings] == tags
    text, plain = pixels(outputs[Condition.TEXT].image), pixels(outputs[Condition.PLAIN].image)
    assert (text == pixels(text_only)).all()
    assert (text != plain).any() and (plain != pixels(localized.image)).any()


@pytest.mark.parametrize("case", SUITE, ids=[c.id for c in SUITE])
def test_every_case_is_a_request_the_server_takes(service: ImageService, case: Case) -> None:
    tags = [tag for tag, _ in case.tags]
    images = [data_uri(png_bytes((64, 64)))] * len(tags)
    valid = service.validate(Request(case.prompt, *DEFAULT_ENTRY, reference_tags=tags, reference_images=images, seed=1))
    assert [r.tag for r in valid.references] == tags


def test_plain_is_diffusers_multi_image_ip_adapter(service: ImageService) -> None:
    """diffusers attends over all references' tokens at once; bound as global, each reference has
    its own attention: the same for one reference, not for two."""
    images = [photo_like(96, 96, seed=1), photo_like(96, 96, seed=2).rotate(90)]
    with small_plans(6):
        plan = plan_for(*DEFAULT_ENTRY)

        def plain(count: int, how: Plain) -> np.ndarray:
            tags = ["ref1", "ref2"][:count]
            prompt = " and ".join(f"@{t}" for t in tags)
            rendered = render(service, prompt, tags, images[:count], 3, plan, Condition.PLAIN, how)
            return pixels(rendered.image)

        one = np.abs(plain(1, Plain.DIFFUSERS) - plain(1, Plain.GLOBAL)).mean()
        two = np.abs(plain(2, Plain.DIFFUSERS) - plain(2, Plain.GLOBAL)).mean()
    assert one < 0.5 and two > 2, (one, two)


# The statistics, on known inputs.


def test_bootstrap_of_a_constant_is_the_constant() -> None:
    ci = bootstrap_ci([0.25] * 20)
    assert (ci.mean, ci.low, ci.high, ci.n) == (0.25, 0.25, 0.25, 20)


def test_bootstrap_interval_is_the_normal_one_for_many_values() -> None:
    values = np.random.default_rng(7).normal(0.5, 1.0, 2000)
    ci = bootstrap_ci(values)
    half = 1.96 * values.std() / np.sqrt(values.size)
    assert ci.mean == pytest.approx(values.mean())
    assert ci.low < ci.mean < ci.high
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.1)
    assert bootstrap_ci(values, level=0.5).high - bootstrap_ci(values, level=0.5).low < half


def test_bootstrap_resamples_whole_groups() -> None:
    """Ten images of 50 tags that all score alike are ten draws, not 500."""
    per_group = np.random.default_rng(3).normal(0, 1, 10)
    values = np.repeat(per_group, 50)
    groups = np.repeat([f"image {k}" for k in range(10)], 50)
    clustered = bootstrap_ci(values, list(groups))
    alone = bootstrap_ci(per_group)
    assert (clustered.low, clustered.high) == pytest.approx((alone.low, alone.high))
    assert clustered.groups == 10
    independent = bootstrap_ci(values)
    assert independent.high - independent.low < (clustered.high - clustered.low) / 3


def test_bootstrap_refuses_what_it_cannot_use() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="3 groups for 2 values"):
        bootstrap_ci([1.0, 2.0], ["a", "b", "c"])


def test_paired_difference_pairs_by_key() -> None:
    """Each prompt's level varies far more than the condition's effect: only pairing sees it. The
    second condition's scores come in the opposite order."""
    rng = np.random.default_rng(11)
    keys = [(f"case {k}", 1000, "tag") for k in range(60)]
    level = rng.normal(0, 1, len(keys))
    a = {k: lv + 0.1 + rng.normal(0, 0.01) for k, lv in zip(keys, level, strict=True)}
    b = {k: lv for k, lv in reversed(list(zip(keys, level, strict=True)))}
    ci = paired_difference(a, b, group=lambda key: key[:2])
    assert ci.low < 0.1 < ci.high and ci.high - ci.low < 0.01
    assert ci.mean == pytest.approx(np.mean([a[k] - b[k] for k in keys]))
    assert ci.excludes_zero


def test_paired_difference_refuses_unpaired_keys() -> None:
    with pytest.raises(ValueError, match=r"only in the first \[\('x', 1, 't'\)\]"):
        paired_difference({("x", 1, "t"): 1.0, ("y", 1, "t"): 1.0}, {("y", 1, "t"): 0.0})


def test_score_metrics_and_matrix_on_known_scores() -> None:
    def score(condition: str, seed: int, woman: float, man: float, outside: float) -> Score:
        inside = {"woman": woman, "man": man, "raincoat": 0.9, "park": 0.2}
        return Score(condition, "c", seed, "w", "woman", "subject", 0.4, ("woman", "man"), inside, outside)

    scores = [score("A", 1, 0.8, 0.5, 0.6), score("A", 2, 0.6, 0.3, 0.6), score("B", 1, 0.5, 0.5, 0.5)]
    first = scores[0]
    # The raincoat was not in the request: it is no "other reference" of this tag.
    assert (first.own_inside, first.contrast, first.others_inside, first.margin) == pytest.approx((0.8, 0.2, 0.5, 0.3))
    means = {name: ci.mean for name, ci in summary(scores, "A").items() if ci}
    assert means == pytest.approx(
        {
            "own ref inside": 0.7,
            "own ref outside": 0.6,
            "inside - outside": 0.1,
            "other refs inside": 0.4,
            "own - others inside": 0.3,
        }
    )
    row = leakage_matrix(scores, "A")["woman"]
    assert row["man"].mean == pytest.approx(0.4) and row["raincoat"].mean == pytest.approx(0.9)
    assert row["own ref outside"].mean == pytest.approx(0.6)
    assert leakage_matrix(scores, "A")["park"]["woman"] is None


# Regions and similarity, on known images, with the tiny weights' CLIP image encoder.


@pytest.fixture(scope="module")
def scorer(tiny_weights: Path) -> ClipScorer:
    encoder = CLIPVisionModelWithProjection.from_pretrained(tiny_weights / IP_ADAPTER.folder / IMAGE_ENCODER_SUBFOLDER)
    return ClipScorer(encoder.eval(), clip_processor(encoder.config.image_size))


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    image = Image.new("RGB", (left.width + right.width, left.height))
    image.paste(left, (0, 0))
    image.paste(right, (left.width, 0))
    return image


def test_masked_view_is_the_region_in_a_square_of_the_fill() -> None:
    image = photo_like(100, 80, seed=1)
    mask = np.zeros((80, 100), dtype=bool)
    mask[30:40, 20:60] = True  # a 40x10 strip
    mask[35, 20] = False  # one pixel of its box outside the region
    view = np.asarray(masked_view(image, mask, (1, 2, 3)))
    assert view.shape == (40, 40, 3)
    pixels = np.asarray(image)
    assert (view[15:25] == np.where(mask[30:40, 20:60, None], pixels[30:40, 20:60], (1, 2, 3))).all()
    assert (view[:15] == (1, 2, 3)).all() and (view[25:] == (1, 2, 3)).all()
    assert (view[20, 0] == (1, 2, 3)).all()
    assert masked_view(image, np.zeros((80, 100), dtype=bool), (0, 0, 0)) is None


def test_masks_land_on_the_output_as_the_last_pass_applied_them() -> None:
    mask = np.array([[1.0, 0.49, 0, 0], [0.5, 0, 0, 0]])  # soft weights: the region is 0.5 or more
    # Downscaled: the base's layout, covered and centre-cropped as the image is (2 columns cut).
    cropped = mask_on_output(mask, Plan(base=(64, 32), target=(60, 32)))
    assert cropped.shape == (32, 60) and cropped[:, :14].all() and not cropped[:, 14:].any()
    # Refined: stretched to the target, as the refine pass resizes them to its layers.
    stretched = mask_on_output(mask, Plan(base=(32, 16), target=(80, 40)))
    assert stretched.shape == (40, 80) and stretched[:, :20].all() and not stretched[:, 20:].any()


def test_region_similarity_inside_and_outside(scorer: ClipScorer) -> None:
    a, b = photo_like(224, 224, seed=1), photo_like(224, 224, seed=2).rotate(90)
    refs = scorer.embed([a, b])
    mask = np.zeros((224, 448), dtype=bool)
    mask[:, :224] = True
    inside, outside = scorer.region_similarity(side_by_side(a, b), mask, refs)
    cross = float(refs[0] @ refs[1])
    assert cross < 0.9999, "the test's two images must look different to the encoder"
    assert inside == pytest.approx([1.0, cross], abs=1e-5)
    assert outside == pytest.approx([cross, 1.0], abs=1e-5)


def test_each_tag_is_scored_in_its_own_region_in_every_condition(scorer: ClipScorer) -> None:
    """The localized run put @ref1 (woman) on the left and @ref2 (man) on the right: it scores
    its own reference there; the plain run, which has them the other way round, scores the other's."""
    woman, man = photo_like(224, 224, seed=1), photo_like(224, 224, seed=2).rotate(90)
    others = [photo_like(224, 224, seed=s) for s in (3, 4)]
    refs = scorer.embed([woman, man, *others])  # in REFERENCE_KEYS order
    case = Case("test", "@ref1 and @ref2", (("ref1", "woman"), ("ref2", "man")), "test")
    bindings = [Binding(0, "ref1", Kind.SUBJECT, (1,)), Binding(1, "ref2", Kind.SUBJECT, (3,))]
    masks = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # [n, h, w]: left, right
    as_placed, swapped = side_by_side(woman, man), side_by_side(man, woman)
    outputs = {
        Condition.TEXT: Rendered(as_placed, bindings, None, 1.0),
        Condition.PLAIN: Rendered(swapped, bindings, None, 1.0),
        Condition.LOCALIZED: Rendered(as_placed, bindings, masks, 1.0),
    }
    scores, skipped = score_case(scorer, case, 7, outputs, Plan(base=(448, 224), target=(448, 224)), refs)
    assert not skipped and len(scores) == 6
    got = {(s.condition, s.tag): s for s in scores}
    for tag in ("ref1", "ref2"):
        mine = got[(str(Condition.LOCALIZED), tag)]
        assert mine.own_inside == pytest.approx(1.0, abs=1e-5) and mine.area == 0.5 and mine.kind == "subject"
        assert mine.contrast > 0 and mine.margin > 0
        plain = got[(str(Condition.PLAIN), tag)]
        assert plain.outside == pytest.approx(1.0, abs=1e-5) and plain.contrast < 0 and plain.margin < 0
        assert got[(str(Condition.TEXT), tag)].inside == pytest.approx(mine.inside)
    assert set(got[(str(Condition.LOCALIZED), "ref1")].present) == {"woman", "man"}


def test_no_applied_mask_is_said_not_scored(scorer: ClipScorer) -> None:
    image = photo_like(64, 64)
    case = CASES["noun"]
    bindings = [Binding(0, "woman", Kind.SUBJECT, (4,))]
    outputs = {c: Rendered(image, bindings, None, 1.0) for c in Condition}
    scores, skipped = score_case(scorer, case, 1, outputs, Plan((64, 64), (64, 64)), scorer.embed([image] * 4))
    assert scores == [] and "no mask was applied" in skipped[0]


# The command line.


def test_missing_real_weights_name_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"download_weights\.py.*--tiny"), weights_folder(tmp_path, False, None, False):
        pass


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "0"], "--seeds must be at least 1, got 0"),
        (["--entry", "720p"], "--entry: one entry"),
        (["--entry", "720p 5:4"], "--entry: "),
        (["--cases", "noun,bogus"], "--cases: unknown bogus"),
    ],
)
def test_bad_options_are_named(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        evaluate.parse_args(argv)
    assert message in capsys.readouterr().err
