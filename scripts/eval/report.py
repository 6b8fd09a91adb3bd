"""The evaluation's report, written into one folder: report.md (what ran, on what, the numbers),
results.json (every score), the references, every output, a mask overlay per case and seed, and
grid.png (each case and seed in the three conditions beside the localized run's masks)."""

from __future__ import annotations

import dataclasses
import json
import platform
import re
import statistics
from pathlib import Path

import diffusers
import numpy as np
import torch
from PIL import Image, ImageDraw

from model.engine.weights import weights_label
from model.serving.output import write_mask_image
from model.serving.service import ImageService
from scripts.bench.common import device_name
from scripts.eval.regions import MIN_AREA, mask_on_output
from scripts.eval.render import Condition, Plain
from scripts.eval.run import Evaluation
from scripts.eval.scores import METRICS, OUTSIDE, leakage_matrix, paired, summary
from scripts.eval.stats import LEVEL, RESAMPLES, Interval
from scripts.eval.suite import REFERENCE_ENTRY, REFERENCES

THUMB = 192
GAP = 4  # between two thumbnails
LABEL_WIDTH = 170
PLAIN_TEXT = {
    Plain.DIFFUSERS: "diffusers' own multi-image IP-Adapter (the pipeline called without the region state: "
    "every IP-Adapter layer runs diffusers' IPAdapterAttnProcessor2_0 unmasked, one attention over all "
    "references' tokens)",
    Plain.GLOBAL: "every reference bound as global (this project's processors, each reference its own "
    "attention at full scale over the whole image: the localized run's arithmetic with all-ones masks)",
}


def weights_line(label: str, folder: Path) -> str:
    """The report's first fact: which weights, and what the numbers are then worth."""
    if label == "tiny random":
        return (
            f"**Weights: TINY RANDOM: numbers meaningless.** Tiny random stand-ins "
            f"(scripts/make_random_weights.py) from `{folder}`: the images are noise, and the numbers "
            "show only that the evaluation runs end to end."
        )
    if label == "full-size random":
        return (
            f"**Weights: FULL-SIZE RANDOM: numbers meaningless (timing only).** The published architectures "
            f"with random values, from `{folder}`: the images are noise; only the seconds mean something."
        )
    return f"**Weights: real** (SDXL base 1.0, IP-Adapter Plus ViT-H), from `{folder}`."


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cell(value: Interval | None) -> str:
    return "–" if value is None else str(value)


def facts(service: ImageService, result: Evaluation) -> dict:
    """What a reader needs to know of the run."""
    config, region = service.config, service.config.region
    return {
        "weights": weights_label(service.settings.weights_dir),
        "weights_dir": str(service.settings.weights_dir),
        "machine": device_name(),
        "device": str(service.runtime.device),
        "dtype": str(service.runtime.dtype).removeprefix("torch."),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "entry": " ".join(result.options.entry),
        "plan": result.plan.describe(),
        "steps": config.steps,
        "guidance": config.guidance,
        "ip_adapter_scale": config.ip_adapter_scale,
        "warmup_fraction": region.warmup_fraction,
        "threshold": region.threshold,
        "anchor": region.anchor_prefix,
        "seeds": result.options.seed_list,
        "cases": [c.id for c in result.options.cases],
        "plain": str(result.options.plain),
    }


def timing(result: Evaluation) -> dict[str, dict[str, float]]:
    """Seconds per image of each condition, of the references, and of scoring."""
    out = {}
    for condition in Condition:
        seconds = [o[condition].seconds for o in result.outputs.values()]
        if seconds:
            out[str(condition)] = {
                "images": len(seconds),
                "median_s": statistics.median(seconds),
                "total_s": sum(seconds),
            }
    refs = result.reference_seconds
    out["references"] = {"images": len(refs), "median_s": statistics.median(refs), "total_s": sum(refs)}
    outputs = len(result.outputs) * len(Condition)
    # Scoring is timed per case and seed (three outputs at once): its "median" is the mean per output.
    out["scoring (mean)"] = {
        "images": outputs,
        "median_s": result.scoring_seconds / max(outputs, 1),
        "total_s": result.scoring_seconds,
    }
    return out


def markdown(result: Evaluation, info: dict, times: dict[str, dict[str, float]]) -> str:
    scores = result.scores
    lines = [
        "# Placement evaluation",
        "",
        weights_line(info["weights"], Path(info["weights_dir"])),
        "",
        f"Machine: {info['machine']} ({info['device']}, {info['dtype']}); "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        + f"; {info['date']}.",
        "",
        f"Output: {info['entry']} ({info['plan']}); {info['steps']} steps, guidance {info['guidance']}, "
        f"IP-Adapter scale {info['ip_adapter_scale']}; tagged references start after "
        f"{info['warmup_fraction']:.0%} of the steps, threshold {info['threshold']}, anchor `{info['anchor']}`. "
        f"Seeds {', '.join(map(str, info['seeds']))}; {len(info['cases'])} cases; "
        f"{len(scores) // len(Condition)} tags scored per condition.",
        "",
        "Seconds per image: generation (denoising and decoding, the adapter's work included), the references'"
        " generation, and the CLIP scoring of an output's regions.",
        "",
        "| timing | images | median s per image | total s |",
        "|---|---|---|---|",
        *(f"| {name} | {t['images']} | {t['median_s']:.2f} | {t['total_s']:.1f} |" for name, t in times.items()),
        "",
        "## What is measured",
        "",
        "Four references are made by the model itself in text-only mode, each from a fixed prompt and seed "
        f"(at {' '.join(REFERENCE_ENTRY)}): "
        + "; ".join(f"{r.key} ({r.what}, seed {r.seed}): “{r.prompt}”" for r in REFERENCES)
        + ". Every case below is rendered with the same prompt text, seed and size in three conditions: "
        f"**{Condition.TEXT}** (no reference), **{Condition.PLAIN}**: {PLAIN_TEXT[result.options.plain]}, and "
        f"**{Condition.LOCALIZED}** (this project's tag placement, as the server runs it).",
        "",
        "A tag's **region** is the mask that the localized run's last denoising step applied to its reference "
        "(`RegionState.final_masks()`), brought onto the output as that pass used it. The other two conditions "
        "are scored in **the same regions**, so that every score pairs with the same tag's in the other "
        "conditions; their own layout may differ from the localized run's, and a region only says where the "
        "localized run put the tag. A tag applied to the whole image (kind global) has no outside.",
        "",
        "**Similarity**: cosine of CLIP image embeddings (the pipeline's ViT-H image encoder, "
        "`image_embeds`) between a reference and a view of the output: the region's bounding box padded to a "
        "square, pixels outside the region set to the encoder's mean colour. Regions under "
        f"{MIN_AREA:.0%} of the image are not scored. Intervals: {LEVEL:.0%} percentile bootstrap "
        f"({RESAMPLES} resamples) over output images (a case and a seed), so that the tags of one image "
        "count as one draw. Higher `inside - outside` (own reference more inside its region than outside) and "
        "higher `own - others inside` (its region looks more like its own reference than like the request's "
        "others) mean better placement.",
        "",
        "## Summary per condition",
        "",
        "| condition | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 1) + "|",
    ]
    for condition in Condition:
        row = summary(scores, str(condition))
        lines.append(f"| {condition} | " + " | ".join(cell(row[m]) for m in METRICS) + " |")
    lines += [
        "",
        f"## Paired differences against {Condition.PLAIN}",
        "",
        "Tag by tag (same case, seed, tag and region), the condition minus plain IP-Adapter; an interval "
        "that excludes 0 is a difference these seeds and cases support.",
        "",
        "| condition | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 1) + "|",
    ]
    for condition in (Condition.LOCALIZED, Condition.TEXT):
        diff = paired(scores, str(condition), str(Condition.PLAIN))
        lines.append(f"| {condition} − plain | " + " | ".join(cell(diff[m]) for m in METRICS) + " |")
    for condition in Condition:
        matrix = leakage_matrix(scores, str(condition))
        columns = [r.key for r in REFERENCES]
        lines += [
            "",
            f"## Leakage matrix: {condition}",
            "",
            "Row: the reference whose tag's region is looked at; column: similarity of that region with each "
            "reference (a reference the request did not have is the chance level), and with its own "
            "reference outside the region.",
            "",
            "| region of | " + " | ".join(columns) + f" | {OUTSIDE} |",
            "|---" * (len(columns) + 2) + "|",
        ]
        for row, cells in matrix.items():
            n = next((c.n for c in cells.values() if c is not None), 0)
            lines.append(f"| {row} (n={n}) | " + " | ".join(cell(cells[c]) for c in [*columns, OUTSIDE]) + " |")
    lines += [
        "",
        "## Cases",
        "",
        "Each tag's reference, the kind the localized run gave it, and its region's share of the image per seed.",
        "",
        "| case | prompt | tags | what it exercises |",
        "|---|---|---|---|",
    ]
    for case in result.options.cases:
        tags = []
        for tag, ref in case.tags:
            mine = [s for s in scores if s.case == case.id and s.tag == tag and s.condition == str(Condition.LOCALIZED)]
            kinds = "/".join(sorted({s.kind for s in mine})) or "not scored"
            shares = "/".join(f"{s.area:.0%}" for s in mine)
            tags.append(f"@{tag} → {ref} ({kinds} {shares})")
        lines.append(f"| {case.id} | `{case.prompt}` | {'; '.join(tags)} | {case.note} |")
    if result.unscored:
        lines += ["", "Not scored:", "", *(f"- {line}" for line in result.unscored)]
    lines += [
        "",
        "## Images",
        "",
        "References (`references/`):",
        "",
        "![references](references.png)",
        "",
        f"Each case and seed: {', '.join(map(str, Condition))}, and the localized run's masks over its output "
        "(`images/`, `overlays/`):",
        "",
        "![grid](grid.png)",
        "",
    ]
    return "\n".join(lines)


def labelled_strip(images: list[Image.Image], label: str, labels: list[str] | None = None) -> Image.Image:
    """One row of thumbnails with a label on its left (and one above each, when given)."""
    top = 14 if labels else 0
    strip = Image.new("RGB", (LABEL_WIDTH + (THUMB + GAP) * len(images), THUMB + top + GAP), "white")
    draw = ImageDraw.Draw(strip)
    draw.multiline_text((6, top + 6), label, fill="black")
    for k, image in enumerate(images):
        # Fitted into the square cell, enlarged too (a test's outputs are smaller than a cell).
        scale = min(THUMB / image.width, THUMB / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        thumb = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        strip.paste(thumb, (LABEL_WIDTH + (THUMB + GAP) * k + (THUMB - size[0]) // 2, top + (THUMB - size[1]) // 2))
        if labels:
            draw.text((LABEL_WIDTH + (THUMB + GAP) * k + 4, 1), labels[k], fill="black")
    return strip


def stack(rows: list[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for row in rows:
        out.paste(row, (0, y))
        y += row.height
    return out


def write_images(result: Evaluation, out: Path) -> None:
    """Every image as a file, the mask overlays, and the two contact sheets."""
    for folder in ("references", "images", "overlays"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for key, image in result.references.items():
        image.save(out / "references" / f"{key}.png")
    stack([labelled_strip(list(result.references.values()), "references", list(result.references))]).save(
        out / "references.png"
    )
    rows = []
    headers = [*map(str, Condition), "localized masks"]
    cases = {case.id: case for case in result.options.cases}
    for (case_id, seed), outputs in result.outputs.items():
        name = f"{case_id}-s{seed}"
        row = []
        for condition, rendered in outputs.items():
            rendered.image.save(out / "images" / f"{name}-{slug(condition)}.png")
            row.append(rendered.image)
        localized = outputs[Condition.LOCALIZED]
        overlay_path = out / "overlays" / f"{name}.png"
        if localized.masks is not None:
            masks = np.stack([mask_on_output(m, result.plan) for m in localized.masks]).astype(np.float32)
            labels = [f"@{b.tag} ({b.kind})" for b in localized.bindings]
            write_mask_image(localized.image, masks, labels, overlay_path)
            with Image.open(overlay_path) as overlay:
                row.append(overlay.copy())
        else:
            row.append(Image.new("RGB", localized.image.size, "lightgrey"))
        tags = "\n".join(f"@{t}: {r}" for t, r in cases[case_id].tags)
        rows.append(labelled_strip(row, f"{case_id}\nseed {seed}\n{tags}", headers if not rows else None))
    if rows:
        stack(rows).save(out / "grid.png")


def write_report(service: ImageService, result: Evaluation, out: Path, date: str) -> Path:
    """Write the whole report into `out` (made if missing); returns report.md's path."""
    out.mkdir(parents=True, exist_ok=True)
    info = {**facts(service, result), "date": date}
    times = timing(result)
    write_images(result, out)
    report = out / "report.md"
    report.write_text(markdown(result, info, times))
    results = {
        **info,
        "timing": times,
        "unscored": result.unscored,
        "summary": {
            str(c): {m: dataclasses.asdict(v) if v else None for m, v in summary(result.scores, str(c)).items()}
            for c in Condition
        },
        "scores": [dataclasses.asdict(s) for s in result.scores],
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return report
