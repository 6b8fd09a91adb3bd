"""The main job: start the Cog server and write an image for a sample request with references.

    python scripts/run_sample.py [--out outputs/sample.png] [--weights-dir weights] [--tiny-weights-dir .tiny-weights]

Uses the real weights when weights/ holds them all; otherwise builds tiny random weights into
.tiny-weights/ (offline, seconds) and says so loudly: those images are noise. The request is
Replicate's example (three tagged references, 4:3, 1080p), with reference images drawn locally
and sent as data: URIs, since no network is assumed.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from model.engine.weights import missing_repos  # noqa: E402
from scripts.cog_predict import failure, predict_on_new_server, save_output  # noqa: E402

log = logging.getLogger("run_sample")
PROMPT = (
    "a close up portrait of @woman and @man standing in @park, hands in pockets, looking cool. "
    "She is wearing her pink sweater and bangles."
)


def drawn_reference(kind: str) -> Image.Image:
    """A simple drawn stand-in for a reference photo of `kind` (park, woman or man)."""
    image = Image.new(
        "RGB", (512, 640), {"park": (90, 160, 80), "woman": (240, 200, 210), "man": (120, 140, 190)}[kind]
    )
    draw = ImageDraw.Draw(image)
    if kind == "park":
        draw.rectangle((0, 0, 512, 260), fill=(150, 200, 240))
        for x in (80, 250, 420):
            draw.ellipse((x - 60, 200, x + 60, 360), fill=(40, 110, 50))
    else:
        draw.ellipse((176, 120, 336, 300), fill=(230, 190, 160))
        draw.rectangle((136, 320, 376, 640), fill=(220, 90, 140) if kind == "woman" else (60, 60, 70))
    return image


def reference(kind: str) -> str:
    """`drawn_reference` as a PNG data URI."""
    buf = io.BytesIO()
    drawn_reference(kind).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def pick_weights(real: Path, tiny: Path) -> tuple[Path, dict[str, str]]:
    """The real weights when `real` holds them all, else the tiny ones (built into `tiny` if
    missing), with the server settings each runs with."""
    if not missing_repos(real):
        log.info("Using REAL weights from %s", real)
        return real, {}
    log.info(
        "%s is incomplete (run scripts/download_weights.py for the real weights): using TINY RANDOM "
        "weights from %s, so the image will be noise of the right size",
        real,
        tiny,
    )
    if missing_repos(tiny):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_random_weights.py"), str(tiny)], check=True)
    return tiny, {"GEN4_STEPS": "4"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "sample.png")
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights", help="the real weights")
    parser.add_argument("--tiny-weights-dir", type=Path, default=ROOT / ".tiny-weights", help="built here if missing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    weights, env = pick_weights(args.weights_dir, args.tiny_weights_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    inputs = {
        "prompt": PROMPT,
        "resolution": "1080p",
        "aspect_ratio": "4:3",
        "reference_tags": ["park", "woman", "man"],
        "reference_images": [reference(k) for k in ("park", "woman", "man")],
    }
    log.info("POST /predictions with Replicate's example request, once the server is READY")
    body = predict_on_new_server(inputs, weights, env, args.out.parent / "server.log")
    log.info("prediction logs:\n%s", body.get("logs", ""))
    if body.get("status") != "succeeded":
        raise SystemExit(failure(body))
    save_output(body["output"], args.out)
    with Image.open(args.out) as image:
        log.info("wrote %s (%dx%d %s)", args.out, image.width, image.height, image.format)


if __name__ == "__main__":
    main()
