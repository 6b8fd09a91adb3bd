"""Tag placement end to end: the real pipeline on tiny weights, its real processors, planted maps.

The anchor layers' text attention is planted: forward hooks on every cross-attention layer's query
and key projections make the conditional half attend from each pixel to a tag's tokens by a
chosen strength, found from the tokenizer's ids (not from the code under test). The anchor block
(the configured one) gets the intended layout; every other cross-attention layer, and the
unconditional half, get a different one, so that reading the wrong layers, the wrong half or the
wrong tokens shows as a wrong region. What each layer applied is measured, not read from the
state: at a probed step every IP-Adapter layer is called again with one reference's image
embeddings changed, and where its output changes is where that reference was applied.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention

from model.contract.prompt import parse_prompt
from model.contract.request import Request
from model.contract.tables import OUTPUT_SIZES
from model.engine import plan as plans
from model.engine.generate import Generation
from model.engine.graphs import install_unet_graphs, rerun
from model.engine.placement.processors import TagRegionAttnProcessor
from model.engine.placement.state import RegionState
from model.engine.plan import Plan, refine_steps
from model.serving import service as service_module
from model.serving.service import ImageService
from model.serving.settings import Settings
from model.serving.setup import build_service
from tests.conftest import png_bytes, small_plans

PROMPT = "a photo of @woman and @man in @park"
# Request order differs from the prompt's order and from kind order (subjects, then the place).
TAGS = ["park", "man", "woman"]
STEPS = 3  # warm-up is 1 step: step 0 records, steps 1 and 2 apply masks, step 2's maps go unused

# A strength profile: tag -> attention score as a function of u, the horizontal position (0..1).
Profile = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def bands(*spans: tuple[str, float, float, float]) -> Profile:
    """A profile of vertical bands: (tag, from u, to u, score)."""

    def profile(u: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for tag, lo, hi, score in spans:
            out[tag] = out.get(tag, torch.zeros_like(u)) + torch.where((u >= lo) & (u < hi), score, 0.0)
        return out

    return profile


# woman | woman and man both strong (woman more) | park | man. A map read from the wrong token is
# the complement of the tag's band; from the unconditional half, flat; from another block, mirrored.
LAYOUT = bands(
    ("woman", 0.0, 0.3, 8.0),
    ("woman", 0.3, 0.45, 7.2),
    ("man", 0.3, 0.45, 7.0),
    ("park", 0.45, 0.7, 8.0),
    ("man", 0.7, 1.0, 8.0),
)
# Where each reference must be applied (and no other): its band, less a margin for the rule's
# smoothing and the masks' resizing.
CORES = {"woman": (0.0, 0.2), "park": (0.5, 0.65), "man": (0.8, 1.0)}


def moving(step_layouts: list[tuple[float, float]]) -> Callable[[int], Profile]:
    """Per step: woman on [0, a), park on [a, b), man on [b, 1): a layout that moves every step,
    so that each step's masks differ from the step before's."""
    return lambda step: bands(
        ("woman", 0.0, step_layouts[step % len(step_layouts)][0], 8.0),
        ("park", *step_layouts[step % len(step_layouts)], 8.0),
        ("man", step_layouts[step % len(step_layouts)][1], 1.0, 8.0),
    )


MOVING = moving([(0.25, 0.75), (0.5, 0.8), (0.15, 0.4), (0.6, 0.7)])


@dataclass
class Applied:
    """Where each reference (request order) changed one IP-Adapter layer's output at one UNet call."""

    call: int
    layer: str
    masks: torch.Tensor  # [references, h, w] bool


@dataclass
class Harness:
    """Planted text attention and measured adapter masks on a service's UNet."""

    service: ImageService
    schedule: Callable[[int], Profile]  # UNet call (the step, counted across passes) -> layout
    probe: Callable[[int], bool]  # which UNet calls to measure
    positions: dict[str, int] = field(default_factory=dict)
    calls: int = -1
    region: RegionState | None = None  # the state of the layer being called
    applied: list[Applied] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)  # id(processor) -> layer name
    head_dim: int = 8  # of every cross-attention layer of the tiny UNet (checked)

    def anchor(self, name: str) -> bool:
        return name.startswith(self.service.config.region.anchor_prefix)

    def cond_rows(self, text: torch.Tensor) -> torch.Tensor:
        """The conditional half's rows: SDXL's unconditional text (empty negative prompt) is zeros."""
        return text.flatten(1).abs().amax(dim=1) > 0

    def plant_query(self, name: str, output: torch.Tensor) -> torch.Tensor:
        assert self.region is not None
        batch, seq, inner = output.shape
        w = self.region.layer_hw(seq)[1]
        u = ((torch.arange(seq) % w) + 0.5) / w
        profile = self.schedule(self.calls)(u if self.anchor(name) else 1 - u)
        heads = inner // self.head_dim
        planted = torch.zeros(batch, seq, heads, self.head_dim)
        for j, tag in enumerate(TAGS):
            planted[..., j] = profile.get(tag, torch.zeros(seq))[:, None] * self.head_dim**0.5
        return planted.view(batch, seq, inner).to(output)

    def plant_key(self, text: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        batch, tokens, inner = output.shape
        planted = torch.zeros(batch, tokens, inner // self.head_dim, self.head_dim)
        rows = self.cond_rows(text)
        for j, tag in enumerate(TAGS):
            planted[rows, self.positions[tag], :, j] = 1.0
        return planted.view(batch, tokens, inner).to(output)

    @contextmanager
    def installed(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
        pipe = self.service.pipe
        ids = pipe.tokenizer(parse_prompt(PROMPT).text)["input_ids"]
        self.positions = {tag: ids.index(pipe.tokenizer.convert_tokens_to_ids(f"{tag}</w>")) for tag in TAGS}
        handles = [pipe.unet.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))]
        for name, proc in pipe.unet.attn_processors.items():
            if not isinstance(proc, TagRegionAttnProcessor):
                continue
            layer = name.removesuffix(".processor")
            self.names[id(proc)] = layer
            attn = pipe.unet.get_submodule(layer)
            assert attn.to_q.out_features // attn.heads == self.head_dim
            handles.append(attn.to_q.register_forward_hook(lambda m, i, o, n=layer: self.plant_query(n, o)))
            handles.append(attn.to_k.register_forward_hook(lambda m, i, o: self.plant_key(i[0], o)))
        original = TagRegionAttnProcessor.__call__

        def measured(
            proc: TagRegionAttnProcessor,
            attn: torch.nn.Module,
            hidden_states: torch.Tensor,
            encoder_hidden_states: torch.Tensor | tuple | None = None,
            attention_mask: torch.Tensor | None = None,
            temb: torch.Tensor | None = None,
            scale: float = 1.0,
            ip_adapter_masks: list[torch.Tensor] | None = None,
            region: RegionState | None = None,
        ) -> torch.Tensor:
            self.region = region
            out = original(
                proc, attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale, ip_adapter_masks, region
            )
            if region is not None and isinstance(encoder_hidden_states, tuple) and self.probe(self.calls):
                masks = self.contributions(original, proc, attn, hidden_states, encoder_hidden_states, region)
                self.applied.append(Applied(self.calls, self.names[id(proc)], masks))
            return out

        monkeypatch.setattr(TagRegionAttnProcessor, "__call__", measured)
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def contributions(
        original: Callable,
        proc: TagRegionAttnProcessor,
        attn: torch.nn.Module,
        hidden: torch.Tensor,
        enc: tuple,
        region: RegionState,
    ) -> torch.Tensor:
        """[references, h, w]: where changing each reference's image embeddings changes the layer's
        output, in either half of the batch. Zero outside a reference's mask is exact (its weight
        multiplies its attention); inside, random weights make a change."""
        text, (ip,) = enc
        # A copy that neither records maps (not an anchor for these calls) nor reuses the adapter
        # keys of the unchanged embeddings (cached per pass, keyed by shape).
        probe = copy.copy(region)
        anchor, proc.anchor = proc.anchor, False
        try:

            def output(images: torch.Tensor) -> torch.Tensor:
                probe._ip_kv = {}
                return original(proc, attn, hidden, (text, [images]), region=probe)

            plain = output(ip)
            changed = []
            for i in range(ip.shape[1]):
                bumped = ip.clone()
                bumped[:, i] += 1.0
                changed.append((output(bumped) - plain).abs().amax(dim=(0, 2)) > 0)
        finally:
            proc.anchor = anchor
        return torch.stack(changed).view(-1, *region.layer_hw(hidden.shape[1]))


def core(tag: str, hw: tuple[int, int]) -> torch.Tensor:
    """[h, w] bool: the pixels of a layer inside `tag`'s core band."""
    lo, hi = CORES[tag]
    u = (torch.arange(hw[1]) + 0.5) / hw[1]
    return ((u >= lo) & (u < hi)).expand(hw)


@pytest.fixture(scope="module")
def service(tiny_weights: Path) -> ImageService:
    return build_service(Settings(weights_dir=tiny_weights, steps=STEPS, device="cpu"))


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("references")
    paths = []
    for colour in ("green", "pink", "navy"):
        path = folder / f"{colour}.png"
        path.write_bytes(png_bytes((128, 128), colour))
        paths.append(path)
    return paths


def ip_layers(service: ImageService) -> set[str]:
    procs = service.pipe.unet.attn_processors.items()
    return {name.removesuffix(".processor") for name, p in procs if isinstance(p, TagRegionAttnProcessor)}


# A wide, short base (latent 80x16, anchor 20x4), downscaled: 20 anchor columns for 4 bands.
WIDE = Plan(base=(640, 128), target=(624, 120))


@pytest.mark.parametrize("path", ["batched", "diffusers-masked"])
def test_each_reference_is_applied_in_its_own_tags_region_in_every_adapter_layer(
    service: ImageService, references: list[Path], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Planted anchor maps through the whole pipeline: from the first step after warm-up on, every
    IP-Adapter layer applies each reference in its own tag's region and nowhere else, and no
    pixel gets two subjects. Catches maps read from the wrong tokens, the wrong half of the batch or
    the wrong block, masks given to the wrong reference, masks applied only in the anchor block,
    and subjects' masks that overlap."""
    if path == "diffusers-masked":  # every layer through diffusers' own masked processor instead
        monkeypatch.setattr(TagRegionAttnProcessor, "fast_path_fits", lambda *_: False)
    monkeypatch.setitem(plans.PLANS, ("720p", "21:9"), WIDE)
    harness = Harness(service, schedule=lambda _: LAYOUT, probe=lambda _: True)
    with harness.installed(monkeypatch):
        service.predict(Request(PROMPT, "720p", "21:9", reference_tags=TAGS, reference_images=references, seed=1))
    layers = ip_layers(service)
    warmup = [a for a in harness.applied if a.call == 0]
    assert {a.layer for a in warmup} == layers
    assert not any(a.masks.any() for a in warmup), "a tagged reference was applied during warm-up"
    for call in (1, 2):
        applied = [a for a in harness.applied if a.call == call]
        assert {a.layer for a in applied} == layers, "not every IP-Adapter layer was measured"
        for a in applied:
            hw = tuple(a.masks.shape[-2:])
            for index, tag in enumerate(TAGS):
                mine, others = core(tag, hw), [core(t, hw) for t in TAGS if t != tag]
                where = f"step {call}, {a.layer}, @{tag}"
                assert a.masks[index][mine].all(), f"{where}: not applied in its own region"
                assert not any(a.masks[index][o].any() for o in others), f"{where}: applied in another tag's region"
            man, woman = TAGS.index("man"), TAGS.index("woman")
            assert not (a.masks[man] & a.masks[woman]).any(), f"step {call}, {a.layer}: two subjects on one pixel"


def test_a_tag_whose_map_has_no_clear_region_applies_everywhere_and_the_logs_say_so(
    service: ImageService, references: list[Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Through the real pipeline: @woman's tokens draw the same attention from every pixel (an
    opaque tag's flat map, dented only where the other tags draw theirs), so the rule finds no
    clear region. Every adapter layer then applies her reference to the whole image, as plain
    IP-Adapter would; the man and the park keep their regions; and the prediction's logs say so."""
    monkeypatch.setitem(plans.PLANS, ("720p", "21:9"), WIDE)
    flat = bands(("woman", 0.0, 1.0, 8.0), ("park", 0.45, 0.7, 8.0), ("man", 0.7, 1.0, 8.0))
    harness = Harness(service, schedule=lambda _: flat, probe=lambda call: call == STEPS - 1)
    capsys.readouterr()
    with harness.installed(monkeypatch):
        service.predict(Request(PROMPT, "720p", "21:9", reference_tags=TAGS, reference_images=references, seed=1))
    out = capsys.readouterr().out
    assert {a.layer for a in harness.applied} == ip_layers(service)
    woman, man, park = TAGS.index("woman"), TAGS.index("man"), TAGS.index("park")
    for a in harness.applied:
        hw = tuple(a.masks.shape[-2:])
        assert a.masks[woman].all(), f"{a.layer}: @woman's reference is not applied everywhere"
        # (No tag draws attention in the woman's core band now: what no tag claims, the park's.)
        assert a.masks[man][core("man", hw)].all(), f"{a.layer}: @man's reference is not in his region"
        assert not a.masks[man][core("woman", hw) | core("park", hw)].any(), f"{a.layer}: @man's is outside it"
        assert a.masks[park][core("park", hw) | core("woman", hw)].all(), f"{a.layer}: @park's is not the backdrop"
        assert not (a.masks[park] & a.masks[man]).any(), f"{a.layer}: @park's reference paints over @man"
    assert "@woman covers 100% of the image (subject)" in out
    assert "@woman has no clear region in its attention map, so its reference applies to the whole image" in out


LOG_LINE = re.compile(r"^@(\w+) covers (\d+)% of the image \((\w+)\)$", re.MULTILINE)


def run_and_report(
    service: ImageService,
    references: list[Path],
    entry: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> tuple[dict[str, tuple[str, str]], np.ndarray, list[str], list[Applied], Generation]:
    """Generate `entry` with the moving layout, measuring the image's last UNet call: the coverage
    lines (tag -> (percent, kind)), the masks and labels handed to masks.png, what was applied,
    and the generation."""
    settings = service.settings
    plan = plans.plan_for(*entry)
    steps = settings.effective_steps
    last = steps - 1 + (refine_steps(steps, settings.refine_strength) if plan.refine else 0)
    harness = Harness(service, schedule=MOVING, probe=lambda call: call == last)
    written: list[tuple[np.ndarray, list[str]]] = []

    def write_mask_image(image: object, masks: np.ndarray, labels: list[str], path: Path) -> Path:
        written.append((masks, labels))
        return path

    generations: list[Generation] = []

    def generate(*args: object, **kwargs: object) -> Generation:
        generations.append(service_generate(*args, **kwargs))
        return generations[-1]

    service_generate = service_module.generate
    monkeypatch.setattr(service_module, "generate", generate)
    monkeypatch.setattr(service_module, "write_mask_image", write_mask_image)
    monkeypatch.setattr(service, "settings", replace(settings, save_masks=True))
    # Each step's own maps: the average across steps (RegionConfig.smoothing) damps a planted
    # layout's move, which these tests need to tell the masks a step applied from the next ones.
    # tests/engine/test_placement_rule.py tests the average.
    region = replace(service.config.region, smoothing=0.0)
    monkeypatch.setattr(service, "config", replace(service.config, region=region))
    capsys.readouterr()
    with harness.installed(monkeypatch):
        service.predict(Request(PROMPT, *entry, reference_tags=TAGS, reference_images=references, seed=3))
    out = capsys.readouterr().out
    assert harness.calls == last, f"{harness.calls + 1} UNet calls, expected {last + 1}"
    logged = {tag: (percent, kind) for tag, percent, kind in LOG_LINE.findall(out)}
    [(masks, labels)] = written
    [generation] = generations
    assert len(generation.regions) == (2 if plan.refine else 1)
    return logged, masks, labels, harness.applied, generation


def assert_reports_are_the_applied_masks(
    service: ImageService,
    references: list[Path],
    entry: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    logged, masks, labels, applied, generation = run_and_report(service, references, entry, monkeypatch, capsys)
    assert labels == ["@park (place)", "@man (subject)", "@woman (subject)"]
    assert masks.shape[0] == len(TAGS)
    # The coverage lines: each tag's own share of the reported masks, in request order.
    assert list(logged) == TAGS
    for index, tag in enumerate(TAGS):
        assert logged[tag] == (f"{masks[index].mean():.0%}".removesuffix("%"), labels[index].split("(")[1][:-1])
    # The reported masks are the ones every adapter layer applied at the image's last step
    # (resized, as each layer resizes them, to its size).
    assert {a.layer for a in applied} == ip_layers(service)
    reported = torch.from_numpy(masks)[None].float()
    for a in applied:
        resized = F.interpolate(reported, size=a.masks.shape[-2:], mode="nearest")[0] > 0
        assert torch.equal(a.masks, resized), f"{a.layer}: applied masks differ from the reported ones"
    # The planted layout moved at the base pass's last step, so that the masks made after it (which
    # only a refine pass applies) differ from the ones that step applied: else this test could not
    # tell the two apart.
    base = generation.regions[0]
    assert base.weights is not None and base.applied is not None
    assert not torch.equal(base.weights, base.applied)


ENTRIES = [(resolution, aspect) for resolution, sizes in OUTPUT_SIZES.items() for aspect in sizes]


@pytest.mark.parametrize("entry", ENTRIES, ids=[" ".join(e) for e in ENTRIES])
def test_logged_shares_and_masks_png_are_the_masks_the_last_step_applied(
    service: ImageService,
    references: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    entry: tuple[str, str],
) -> None:
    """At every entry of the ratio table (downscaled: the base pass's last step; refined: the
    refine pass, which applies the base pass's final masks), the coverage lines and the masks
    handed to masks.png are the masks the adapter layers applied at the image's last step."""
    with small_plans(factor=6):
        assert_reports_are_the_applied_masks(service, references, entry, monkeypatch, capsys)


@pytest.fixture(scope="module")
def turbo(tiny_weights: Path) -> ImageService:
    return build_service(Settings(weights_dir=tiny_weights, device="cpu", turbo=True))


@pytest.mark.parametrize("entry", [("720p", "16:9"), ("1080p", "16:9")], ids=["downscaled", "refined"])
def test_in_turbo_the_reports_are_the_masks_the_last_step_applied(
    turbo: ImageService,
    references: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    entry: tuple[str, str],
) -> None:
    """Turbo: 4 base steps without classifier-free guidance (a batch of one), 1 refine step."""
    assert turbo.settings.effective_steps == 4 and turbo.settings.effective_guidance == 0.0
    with small_plans(factor=6):
        assert_reports_are_the_applied_masks(turbo, references, entry, monkeypatch, capsys)


@pytest.mark.parametrize("entry", [("720p", "4:3"), ("1080p", "4:3")], ids=["downscaled", "refined"])
def test_with_graphed_steps_the_reports_are_the_masks_the_last_step_applied(
    tiny_weights: Path,
    references: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    entry: tuple[str, str],
) -> None:
    """Steps replayed as CUDA graphs would be (`rerun`, the CPU stand-in: each replay runs the step
    over the graph's input buffers): the processors read the masks from those buffers, and the
    reports are still what they applied."""
    graphed = build_service(Settings(weights_dir=tiny_weights, steps=STEPS, device="cpu"))
    graphs = install_unet_graphs(graphed.pipe.unet, capture=rerun)
    with small_plans(factor=6):
        assert_reports_are_the_applied_masks(graphed, references, entry, monkeypatch, capsys)
    assert graphs.replays == STEPS + (1 if entry[0] == "1080p" else 0)


def test_a_pass_of_warm_up_only_says_its_tagged_references_were_not_applied(
    service: ImageService, references: list[Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """One step and no refine pass: the step is warm-up, so no tagged reference was applied, and
    the logs say that rather than a share of masks that no step used."""
    monkeypatch.setattr(service, "settings", replace(service.settings, save_masks=True))
    monkeypatch.setattr(service, "config", replace(service.config, steps=1))
    with small_plans(factor=6):
        service.predict(Request(PROMPT, "720p", "16:9", reference_tags=TAGS, reference_images=references, seed=1))
    out = capsys.readouterr().out
    assert "covers" not in out
    for tag in TAGS:
        assert f"@{tag}'s reference was not applied: tagged references start after the first 1 of 1 steps" in out
    assert "No tag masks to write: no tagged reference was placed" in out
