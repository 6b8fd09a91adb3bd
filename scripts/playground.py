"""A playground page for the model in the browser: references with tags, live progress, and where
each tag landed.

    .venv/bin/python scripts/playground.py                 # starts the Cog server on local weights
    .venv/bin/python scripts/playground.py --url http://127.0.0.1:5000   # a server already up

Without `--url` it starts the Cog server on 127.0.0.1 (harness/server.py) with the real weights
when weights/ holds them all, else with tiny random ones built into .tiny-weights/ (as
scripts/run_sample.py does: those images are noise), and says which. The page (Gradio) is served
on 127.0.0.1 only, unless `--host` says otherwise. It talks to the server only through Cog's
HTTP API: async predictions that report to a webhook this process receives itself, and cancel.

Where each tag landed: the server logs each tag's share of the image, and, with
GEN4_MASKS_IN_LOGS=true (set on the server this command starts), each reference's mask
(model/serving/mask_log.py), which the page draws over the image in that reference's colour.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import html
import io
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# This run's files (uploads, results, the server's queue state), removed at exit; named before
# Gradio is imported, which reads where its own files go then.
FOLDER = Path(tempfile.gettempdir()) / f"gen4-playground-{uuid.uuid4().hex[:12]}"
os.environ.setdefault("GRADIO_TEMP_DIR", str(FOLDER / "gradio"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports leave this machine

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from harness.server import CogServer  # noqa: E402
from model.contract.tables import (  # noqa: E402
    ASPECT_RATIOS,
    DEFAULT_ASPECT_RATIO,
    DEFAULT_RESOLUTION,
    MAX_REFERENCES,
    RESOLUTIONS,
    SEED_RANGE,
    output_size,
)
from model.serving.mask_log import PREFIX as MASKS_PREFIX  # noqa: E402
from model.serving.mask_log import read_masks_line  # noqa: E402
from model.serving.output import MASK_COLOURS, write_mask_image  # noqa: E402
from scripts.cog_predict import output_bytes, setup_lines  # noqa: E402
from scripts.playground_client import (  # noqa: E402
    TERMINAL,
    CogClient,
    Refused,
    WebhookInbox,
    field_of,
    progress,
    prompt_pieces,
    tag_notes,
    tag_shares,
    used_seed,
    wait_ready,
)
from scripts.run_sample import PROMPT as EXAMPLE_PROMPT  # noqa: E402
from scripts.run_sample import drawn_reference, pick_weights  # noqa: E402

log = logging.getLogger("playground")
EXAMPLE_TAGS = ("park", "woman", "man")
UNKNOWN_COLOUR = "#b00020"
CSS = """
.mention { border-radius: 4px; padding: 0 3px; color: #fff; font-weight: 600; }
.mention.unknown { background: #b00020; text-decoration: wavy underline; }
.field-error { color: #b00020; font-weight: 600; margin: 2px 0 6px; }
.flag { color: #b00020; }
#progress progress { width: 100%; height: 14px; }
.full-size { overflow: auto; max-height: 90vh; }
.full-size img { max-width: none; }
.swatch { display: inline-block; width: 14px; height: 14px; border-radius: 3px; vertical-align: middle; }
.share-bar { display: inline-block; height: 10px; vertical-align: middle; }
#history table, #shares table { border-collapse: collapse; width: 100%; }
#history td, #history th, #shares td, #shares th { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; }
"""


def colour(index: int) -> str:
    """Reference `index`'s colour (request order), the server's mask colour (model/serving/output.py)."""
    r, g, b = MASK_COLOURS[index % len(MASK_COLOURS)]
    return f"#{r:02x}{g:02x}{b:02x}"


def file_data_uri(path: str) -> str:
    """A local image file as a data: URI: the server needs no URL it could reach (and would refuse
    one on a private address), and the file goes as the user gave it."""
    data = Path(path).read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            mime = Image.MIME.get(image.format or "", "application/octet-stream")
    except OSError:
        mime = "application/octet-stream"  # the server says what it is not
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def error_html(message: str) -> str:
    return f'<div class="field-error" role="alert">{html.escape(message)}</div>'


@dataclass
class Form:
    """The form's values, and which slot each reference of the request came from."""

    prompt: str
    resolution: str
    aspect_ratio: str
    seed: str
    images: list[str | None]
    tags: list[str]

    def references(self) -> list[int]:
        """Slots with an image, in request order: tagged ones first, since `reference_tags` is
        positional and an untagged image cannot precede a tagged one."""
        filled = [k for k, image in enumerate(self.images) if image]
        return [k for k in filled if self.tags[k].strip()] + [k for k in filled if not self.tags[k].strip()]

    def sent_tags(self) -> list[str]:
        return [self.tags[k].strip() for k in self.references() if self.tags[k].strip()]

    def inputs(self) -> dict[str, Any]:
        """The request, as Replicate's interface takes it. Raises ValueError for a seed that is not
        a number (the one check the page makes itself: the server's schema would say less)."""
        inputs: dict[str, Any] = {
            "prompt": self.prompt,
            "resolution": self.resolution,
            "aspect_ratio": self.aspect_ratio,
            "reference_tags": self.sent_tags(),
            "reference_images": [file_data_uri(str(self.images[k])) for k in self.references()],
        }
        if self.seed.strip():
            try:
                inputs["seed"] = int(self.seed.strip())
            except ValueError:
                low, high = SEED_RANGE
                raise ValueError(
                    f"seed: {self.seed.strip()!r} is not a whole number; leave it blank for a random seed, "
                    f"or use {low} to {high}"
                ) from None
        return inputs


def prompt_view(prompt: str, tags: list[str]) -> str:
    """The prompt with each @tag in its reference's colour, and mentions of no reference flagged."""
    parts = []
    for piece in prompt_pieces(prompt, tags):
        text = html.escape(piece.text)
        if piece.tag is None:
            parts.append(text)
        elif piece.known:
            style = f"background:{colour(tags.index(piece.tag))}"
            parts.append(f'<span class="mention known" data-tag="{piece.tag}" style="{style}">{text}</span>')
        else:
            title = "no reference image has this tag"
            parts.append(f'<span class="mention unknown" data-tag="{piece.tag}" title="{title}">{text}</span>')
    unknown = list(dict.fromkeys(p.tag for p in prompt_pieces(prompt, tags) if p.tag and not p.known))
    flag = ""
    if unknown:
        have = ", ".join(f"@{t}" for t in tags) or "none"
        flag = (
            f'<div class="flag" id="unknown-tags">Not a reference tag: {", ".join("@" + t for t in unknown)} '
            f"(tags with an image: {html.escape(have)}); the server will refuse this prompt.</div>"
        )
    return f'<div class="prompt-view">{"".join(parts) or "&nbsp;"}</div>{flag}'


def size_view(resolution: str, aspect_ratio: str) -> str:
    width, height = output_size(resolution, aspect_ratio)
    return f'<div id="size-text">Output: <b>{width} × {height}</b> px ({aspect_ratio} at {resolution})</div>'


def progress_view(percent: int | None, status: str, seconds: float) -> str:
    value = f' value="{percent}"' if percent is not None else ""  # no value: indeterminate
    shown = f"{percent}%" if percent is not None else "…"
    return (
        f'<div class="progress" data-status="{status}" data-percent="{percent if percent is not None else ""}">'
        f'<progress max="100"{value}></progress> <span>{shown} · {status} · {seconds:.1f}s</span></div>'
    )


def shown_logs(logs: str) -> str:
    """The logs as the page shows them: the masks' data URI line shortened (it is drawn below)."""
    return "\n".join(
        MASKS_PREFIX + "(drawn below)" if line.startswith(MASKS_PREFIX) else line for line in logs.splitlines()
    )


def image_view(path: Path, alt: str) -> str:
    """An image of this playground's folder at its own size (scrolling when larger than the page),
    and a link to the file."""
    url = f"/gradio_api/file={path}"
    with Image.open(path) as image:
        width, height = image.size
    return (
        f'<div class="full-size"><img src="{url}" alt="{alt}" width="{width}" height="{height}"></div>'
        f'<a href="{url}" download="{path.name}">{path.name}</a> ({width} × {height})'
    )


def thumbnail(image: Image.Image, width: int = 160) -> str:
    small = image.convert("RGB")
    small.thumbnail((width, width))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def history_view(history: list[dict[str, Any]]) -> str:
    if not history:
        return "<p>No results yet in this session.</p>"
    rows = []
    for n, item in reversed(list(enumerate(history, 1))):
        thumb = f'<img src="{item["thumb"]}" alt="result {n}">' if item.get("thumb") else ""
        refs = ", ".join(f"@{t}" for t in item["tags"]) or "none"
        rows.append(
            f'<tr class="history-row" data-status="{item["status"]}"><td>{n}</td><td>{thumb}</td>'
            f"<td>{html.escape(item['prompt'])}</td><td>{html.escape(refs)} ({item['references']} image(s))</td>"
            f'<td>{item["resolution"]} {item["aspect_ratio"]}</td><td class="seed">{item["seed"] or ""}</td>'
            f"<td>{item['status']}{': ' + html.escape(item['error']) if item.get('error') else ''}</td>"
            f"<td>{item['seconds']:.1f}s</td></tr>"
        )
    head = "<tr><th>#</th><th>Image</th><th>Prompt</th><th>References</th><th>Size</th><th>Seed</th>"
    return f"<table>{head}<th>Result</th><th>Time</th></tr>{''.join(rows)}</table>"


def shares_view(
    order: list[int], form: Form, shares: dict[str, tuple[int, str]], notes: dict[str, str], masks: bool
) -> str:
    """Each reference, in its colour, with where it applied, its share of the image, and what the
    placement rule said of it (a fallback to the whole image, a worn place)."""
    rows = []
    for index, slot in enumerate(order):
        tag = form.tags[slot].strip()
        name = f"@{html.escape(tag)}" if tag else f"reference {slot + 1} (untagged)"
        if tag in shares:
            share, kind = shares[tag]
            where = f'{kind}: <span class="share-bar" style="width:{2 * share}px;background:{colour(index)}"></span> '
            where += f'<b class="share">{share}%</b> of the image'
            if tag in notes:
                where += f'<div class="share-note">{html.escape(notes[tag])}</div>'
        else:
            where = "global: applies to the whole image (not mentioned, or nothing to place it against)"
        swatch = f'<span class="swatch" style="background:{colour(index)}"></span>'
        cells = f"<td>{swatch}</td><td>{name}</td><td>{where}</td>"
        rows.append(f'<tr class="share-row" data-tag="{html.escape(tag)}">{cells}</tr>')
    if not rows:
        return "<p>No references: nothing to place.</p>"
    note = "" if masks else "<p>No masks in this server's logs: start it with GEN4_MASKS_IN_LOGS=true to see them.</p>"
    return f"<table>{''.join(rows)}</table>{note}"


@dataclass
class Playground:
    """The page and its state: the server's client, and each browser session's running prediction."""

    client: CogClient
    about: str
    folder: Path
    running: dict[str, str] = field(default_factory=dict)
    example_files: list[str] = field(default_factory=list)

    def example(self) -> tuple[Any, ...]:
        """Replicate's example request, with drawn local stand-ins for its three reference photos."""
        if not self.example_files:
            for kind in EXAMPLE_TAGS:
                path = self.folder / f"example-{kind}.png"
                drawn_reference(kind).save(path)
                self.example_files.append(str(path))
        return (EXAMPLE_PROMPT, "1080p", "4:3", "", *self.example_files, *EXAMPLE_TAGS)

    def cancel(self, request: gr.Request) -> str:
        prediction_id = self.running.get(request.session_hash or "")
        if prediction_id is None:
            return ""
        try:
            self.client.cancel(prediction_id)
        except Exception as exc:
            return error_html(f"cancel failed: {type(exc).__name__}: {exc}")
        return ""

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="Gen-4 Image playground", analytics_enabled=False) as page:
            history = gr.State([])
            last_seed = gr.State(None)
            gr.Markdown(f"## Gen-4 Image playground\n{self.about}", elem_id="server")
            with gr.Row():
                with gr.Column(scale=3):
                    prompt = gr.Textbox(label="Prompt (mention a reference as @tag)", lines=3, elem_id="prompt")
                    mentions = gr.HTML(prompt_view("", []), elem_id="prompt-view")
                    prompt_error = gr.HTML("", elem_id="prompt-error")
                with gr.Column(scale=1):
                    resolution = gr.Radio(
                        list(RESOLUTIONS), value=DEFAULT_RESOLUTION, label="Resolution", elem_id="resolution"
                    )
                    aspect = gr.Radio(
                        list(ASPECT_RATIOS), value=DEFAULT_ASPECT_RATIO, label="Aspect ratio", elem_id="aspect-ratio"
                    )
                    size = gr.HTML(size_view(DEFAULT_RESOLUTION, DEFAULT_ASPECT_RATIO), elem_id="output-size")
                    size_error = gr.HTML("", elem_id="size-error")
                    seed = gr.Textbox(label="Seed (blank = random)", elem_id="seed")
                    seed_error = gr.HTML("", elem_id="seed-error")
            images, tags, image_errors, tag_errors = [], [], [], []
            with gr.Row():
                for k in range(MAX_REFERENCES):
                    with gr.Column():
                        images.append(
                            gr.Image(
                                type="filepath",
                                image_mode=None,  # the file as given, not re-encoded
                                sources=["upload", "clipboard"],
                                label=f"Reference {k + 1}",
                                height=200,
                                elem_id=f"ref{k}-image",
                            )
                        )
                        image_errors.append(gr.HTML("", elem_id=f"ref{k}-image-error"))
                        tags.append(gr.Textbox(label=f"Tag {k + 1} (3-15 letters or digits)", elem_id=f"ref{k}-tag"))
                        tag_errors.append(gr.HTML("", elem_id=f"ref{k}-tag-error"))
            references_error = gr.HTML("", elem_id="references-error")
            with gr.Row():
                example = gr.Button("Replicate's example request", elem_id="example")
                run = gr.Button("Run", variant="primary", elem_id="run")
                cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
            gr.Markdown(
                "The example's reference photos are URLs on Replicate's servers; here they are drawn local "
                "stand-ins. References go to the server as data: URIs.",
                elem_id="example-note",
            )
            run_error = gr.HTML("", elem_id="run-error")
            bar = gr.HTML(progress_view(None, "idle", 0.0), elem_id="progress")
            logs = gr.Textbox(label="Logs", lines=10, max_lines=20, interactive=False, elem_id="logs")
            info = gr.HTML("", elem_id="output-info")
            reuse = gr.Button("Use this seed", size="sm", elem_id="reuse-seed")
            output = gr.HTML("", elem_id="output")
            gr.Markdown("### Where each tag landed")
            masks = gr.HTML("", elem_id="masks")
            shares = gr.HTML("", elem_id="shares")
            gr.Markdown("### This session's results")
            past = gr.HTML(history_view([]), elem_id="history")

            form_fields = [prompt, resolution, aspect, seed, *images, *tags]
            gr.on(
                [prompt.change, *(t.change for t in tags), *(i.change for i in images)],
                lambda p, *rest: prompt_view(p, Form(p, "", "", "", list(rest[:3]), list(rest[3:])).sent_tags()),
                inputs=[prompt, *images, *tags],
                outputs=mentions,
                queue=False,
            )
            gr.on([resolution.change, aspect.change], size_view, inputs=[resolution, aspect], outputs=size, queue=False)
            example.click(self.example, outputs=[prompt, resolution, aspect, seed, *images, *tags])
            reuse.click(lambda s: "" if s is None else str(s), inputs=last_seed, outputs=seed, queue=False)
            cancel.click(self.cancel, outputs=run_error)
            errors = [prompt_error, size_error, seed_error, references_error, run_error, *image_errors, *tag_errors]
            outputs = [*errors, bar, logs, info, output, masks, shares, past, history, last_seed]

            ui = locals_map(errors, image_errors, tag_errors, outputs)

            def generate(  # Gradio passes the inputs by position, and the request by its type
                text: str,
                res: str,
                ratio: str,
                seed_text: str,
                image1: str | None,
                image2: str | None,
                image3: str | None,
                tag1: str,
                tag2: str,
                tag3: str,
                record: list[dict[str, Any]],
                request: gr.Request,
            ) -> Any:
                form = Form(text, res, ratio, seed_text, [image1, image2, image3], [tag1, tag2, tag3])
                yield from self.generate(form, record, request, ui)

            run.click(generate, inputs=[*form_fields, history], outputs=outputs, show_progress="hidden")
        return page

    def generate(self, form: Form, record: list[dict[str, Any]], request: gr.Request, ui: dict[str, Any]) -> Any:
        """Run one prediction, yielding the page's updates as its webhooks arrive."""
        cleared = {slot: "" for slot in ui["errors"]}
        started = time.monotonic()
        order = form.references()
        entry = {
            "prompt": form.prompt,
            "tags": form.sent_tags(),
            "references": len(order),
            "resolution": form.resolution,
            "aspect_ratio": form.aspect_ratio,
            "seed": None,
            "status": "failed",
            "error": "",
        }

        def fail(message: str) -> dict[Any, Any]:
            name, index, text = field_of(message)
            slot = ui["run_error"]
            if name == "prompt":
                slot = ui["prompt_error"]
            elif name in ("resolution", "aspect_ratio"):
                slot = ui["size_error"]
            elif name == "seed":
                slot = ui["seed_error"]
            elif name in ("reference_tags", "reference_images"):
                slot = ui["references_error"]
                if index is not None and index < len(order):
                    slots = ui["tag_errors"] if name == "reference_tags" else ui["image_errors"]
                    slot = slots[order[index]]
            entry.update(error=text, seconds=time.monotonic() - started)
            record.append(entry)
            return {slot: error_html(text), ui["history_view"]: history_view(record), ui["history"]: record}

        try:
            inputs = form.inputs()
        except ValueError as exc:
            yield cleared | fail(str(exc))
            return
        yield cleared | {ui["bar"]: progress_view(None, "sending", 0.0), ui["logs"]: ""}
        try:
            prediction_id = self.client.start(inputs)
        except Refused as exc:
            yield fail(str(exc)) | {ui["bar"]: progress_view(None, "refused", time.monotonic() - started)}
            return
        self.running[request.session_hash or ""] = prediction_id
        event: dict[str, Any] = {}
        try:
            for event in self.client.follow(prediction_id):
                text = event.get("logs") or ""
                status = event.get("status", "")
                if status not in TERMINAL:
                    elapsed = time.monotonic() - started
                    yield {ui["bar"]: progress_view(progress(text), status, elapsed), ui["logs"]: shown_logs(text)}
        except RuntimeError as exc:
            yield fail(str(exc))
            return
        finally:
            self.running.pop(request.session_hash or "", None)
        text = event.get("logs") or ""
        elapsed = time.monotonic() - started
        seed = used_seed(text)
        entry["seed"] = seed
        bar = progress_view(progress(text), event.get("status", ""), elapsed)
        done = {ui["bar"]: bar, ui["logs"]: shown_logs(text)}
        if event.get("status") != "succeeded":
            entry["status"] = event.get("status", "failed")
            message = event.get("error") or f"the prediction was {entry['status']}"
            yield done | fail(str(message))
            return
        data, ext = output_bytes(event["output"])
        path = self.folder / f"{prediction_id}{ext or '.png'}"
        path.write_bytes(data)
        with Image.open(path) as opened:
            image, kind = opened.copy(), opened.format
        found = tag_shares(text)
        mask_path: Path | None = None
        masks = read_masks_line(text, len(order))
        if masks is not None:
            labels = [f"@{form.tags[k].strip()}" if form.tags[k].strip() else f"reference {k + 1}" for k in order]
            mask_path = write_mask_image(image, masks, labels, self.folder / f"{prediction_id}.masks.png")
        entry.update(status="succeeded", seconds=elapsed, thumb=thumbnail(image))
        record.append(entry)
        yield done | {
            ui["info"]: (
                f'<div id="result-text">{image.width} × {image.height} {kind} in {elapsed:.1f}s · '
                f'used seed: <b id="used-seed">{seed}</b></div>'
            ),
            ui["output"]: image_view(path, "the output, at full size"),
            ui["masks"]: image_view(mask_path, "each reference's mask in its colour") if mask_path else "",
            ui["shares"]: shares_view(order, form, found, tag_notes(text), masks is not None),
            ui["history_view"]: history_view(record),
            ui["history"]: record,
            ui["last_seed"]: seed,
        }


def locals_map(errors: list[Any], image_errors: list[Any], tag_errors: list[Any], outputs: list[Any]) -> dict[str, Any]:
    """The page's output components by role, for `Playground.generate`."""
    names = ["prompt_error", "size_error", "seed_error", "references_error", "run_error"]
    rest = ["bar", "logs", "info", "output", "masks", "shares", "history_view", "history", "last_seed"]
    ui: dict[str, Any] = dict(zip(names, errors[:5], strict=True))
    ui |= dict(zip(rest, outputs[len(errors) :], strict=True))
    ui |= {"errors": errors, "image_errors": image_errors, "tag_errors": tag_errors}
    return ui


def start_server(args: argparse.Namespace) -> tuple[CogServer, str]:
    """The Cog server on 127.0.0.1 with the local weights, READY; and a line saying which."""
    weights, env = pick_weights(args.weights_dir, args.tiny_weights_dir)
    # The settings the user set for the server (GEN4_*) win over the tiny weights' step count.
    env |= {k: v for k, v in os.environ.items() if k.startswith("GEN4_")}
    env["GEN4_MASKS_IN_LOGS"] = "true"
    # Its own queue state, not that of another server on this machine (scripts/drain.py reads it).
    env.setdefault("GEN4_QUEUE_STATE_FILE", str(FOLDER / "queue.json"))
    args.server_log.parent.mkdir(parents=True, exist_ok=True)
    log.info("Starting the Cog server on %s (its log: %s)...", weights, args.server_log)
    with open(args.server_log, "w") as server_output:
        server = CogServer(weights, log=server_output, extra_env=env)
    try:
        loaded = setup_lines(server.wait_ready(timeout=args.setup_timeout))
    except BaseException:
        server.stop()
        raise
    for line in loaded:
        log.info("%s", line)
    which = "REAL weights" if weights == args.weights_dir else "TINY RANDOM weights (images are noise)"
    return server, f"Cog server at {server.url}, started by this playground on {which} from `{weights}`."


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a Cog server already running (default: start one on the local weights)")
    parser.add_argument("--host", default="127.0.0.1", help="the page's address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="the page's port")
    parser.add_argument(
        "--webhook-host",
        default="127.0.0.1",
        help="the address the server reaches this machine at, for its webhooks (default 127.0.0.1: a server here)",
    )
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights", help="the real weights")
    parser.add_argument("--tiny-weights-dir", type=Path, default=ROOT / ".tiny-weights", help="built here if missing")
    parser.add_argument("--server-log", type=Path, default=ROOT / "outputs" / "playground-server.log")
    parser.add_argument("--setup-timeout", type=float, default=3600, help="seconds to wait for the server's setup")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own requests to its page
    # SIGTERM ends like Ctrl-C, so that the server this started stops with it.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    folder = FOLDER
    folder.mkdir(mode=0o700)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    server: CogServer | None = None
    inbox = WebhookInbox(args.webhook_host)
    try:
        if args.url:
            client = CogClient(args.url, inbox)
            wait_ready(client)
            about = f"Cog server at {args.url} (not started by this playground)."
        else:
            server, about = start_server(args)
            client = CogClient(server.url, inbox)
        log.info("%s", about)
        page = Playground(client, about, folder).build()
        page.queue(default_concurrency_limit=1).launch(
            server_name=args.host,
            server_port=args.port,
            css=CSS,
            theme=gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]),
            allowed_paths=[str(folder)],  # the results, served to the page (and nothing else)
            prevent_thread_lock=True,
            quiet=True,
            ssr_mode=False,
            footer_links=[],
        )
        stops = "it and the server" if server else "it"
        log.info("Playground at http://%s:%d (Ctrl-C stops %s)", args.host, args.port, stops)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        inbox.stop()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
