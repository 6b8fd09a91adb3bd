"""Benchmark: the cost of tag-localized injection against plain multi-image IP-Adapter.

    python scripts/benchmark.py [--weights-dir DIR] [--steps 4] [--runs 5] [--size 960x720]

Runs the same request (3 tagged references, same seed, steps and size) through the loaded SDXL
pipeline twice per round, interleaved: once as diffusers' plain multi-image IP-Adapter (no region
state: all references attend jointly over the whole image), once with this project's per-tag
region masks. Reports the median of each and their ratio, measured side by side in one run, and
writes JSON + a markdown table under docs/benchmarks/ naming the device, versions and date.
Uses the real weights when the folder holds them, else builds tiny random ones (then the absolute
times mean nothing; only the ratio is of interest, and it is a CPU ratio).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import diffusers  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from model.prompt import parse_prompt  # noqa: E402
from model.regions import RegionConfig, RegionState, bind_references  # noqa: E402
from model.service import Generator  # noqa: E402
from model.settings import Settings  # noqa: E402
from model.tokens import mention_positions  # noqa: E402
from model.weights import is_tiny, missing_repos  # noqa: E402

log = logging.getLogger("benchmark")
PROMPT = "a close up portrait of @woman and @man standing in @park, hands in pockets, looking cool."
TAGS = ["park", "woman", "man"]


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def time_call(fn: object) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", default="960x720")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    weights = args.weights_dir
    if missing_repos(weights):
        weights = Path(tempfile.mkdtemp(prefix="tiny-weights-"))
        log.info("no complete weights in %s: building tiny random weights in %s", args.weights_dir, weights)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_weights.py"), str(weights)], check=True)
    width, height = (int(v) for v in args.size.split("x"))

    started = time.perf_counter()
    generator = Generator(Settings(weights_dir=weights, steps=args.steps))
    setup_s = time.perf_counter() - started
    pipe, runtime = generator.pipe, generator.runtime
    images = [Image.new("RGB", (512, 512), c) for c in ("green", "pink", "navy")]
    encoded = generator.encoder.encode(images)
    embeds = encoded.ip_adapter_embeds(guidance=True).to(runtime.device, runtime.dtype)
    parsed = parse_prompt(PROMPT)
    bindings = bind_references(list(TAGS), parsed, mention_positions(parsed, pipe.tokenizer))
    pipe.set_ip_adapter_scale(generator.settings.ip_adapter_scale)
    scale = pipe.vae_scale_factor

    def run(localized: bool) -> None:
        region = RegionState(bindings, RegionConfig(), args.steps, (height // scale, width // scale))
        pipe(
            prompt=parsed.text,
            width=width,
            height=height,
            num_inference_steps=args.steps,
            guidance_scale=generator.settings.guidance,
            ip_adapter_image_embeds=[embeds],
            generator=torch.Generator(device=runtime.device).manual_seed(1),
            cross_attention_kwargs={"region": region} if localized else None,
            callback_on_step_end=(lambda p, i, t, kw: region.end_step() or kw) if localized else None,
            output_type="latent",
        )

    run(False), run(True)  # warm-up
    plain, localized = [], []
    for _ in range(args.runs):
        plain.append(time_call(lambda: run(False)))
        localized.append(time_call(lambda: run(True)))
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device_name(),
        "weights": "tiny random" if is_tiny(weights) else "real",
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "size": f"{width}x{height}",
        "steps": args.steps,
        "references": 3,
        "runs": args.runs,
        "setup_s": round(setup_s, 2),
        "plain_ip_adapter_median_s": round(statistics.median(plain), 4),
        "tag_localized_median_s": round(statistics.median(localized), 4),
        "ratio_localized_over_plain": round(statistics.median(localized) / statistics.median(plain), 3),
        "note": "denoising only (output_type=latent); both arms in one process, interleaved",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"injection-{'tiny' if is_tiny(weights) else 'real'}-{runtime.device.type}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v} |" for k, v in result.items() if k != "versions")
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    (args.out / f"{stem}.md").write_text(
        f"# Tag-localized injection vs plain multi-image IP-Adapter\n\n| | |\n|---|---|\n{rows}\n\n{versions}\n"
    )
    log.info(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
