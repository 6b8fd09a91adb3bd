"""The playground (scripts/playground.py) in a real browser, against the real Cog server it starts on
tiny weights; and the pure parts it reads the server's logs and errors with."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from harness.server import free_port
from model.serving.mask_log import masks_line, read_masks_line
from model.serving.output import MASK_COLOURS
from scripts.playground_client import field_of, progress, prompt_pieces, tag_notes, tag_shares, used_seed
from scripts.run_sample import drawn_reference
from tests.conftest import OFFLINE_ENV, ROOT

CHROMIUM = Path(os.environ.get("GEN4_CHROMIUM", "/usr/bin/chromium"))
# What lets Debian's Chromium run headless here (no sandbox as root, no GPU, nothing fetched).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Set to a path (docs/playground.png) to keep the screenshot of the finished run there.
SCREENSHOT = os.environ.get("GEN4_PLAYGROUND_SCREENSHOT")


def test_masks_survive_the_log_line() -> None:
    masks = np.random.default_rng(0).random((3, 24, 32)).astype(np.float32)
    line = masks_line(masks[:2])
    assert "\n" not in line and len(line) < 4000
    back = read_masks_line(f"Generating...\n100%\n{line}\nGenerated image in 1.0sec\n", references=2)
    assert back is not None and back.shape == (2, 24, 32)
    assert np.abs(back - masks[:2]).max() <= 0.5 / 255 + 1e-6
    assert read_masks_line("Generating...\n100%\n", references=2) is None
    with pytest.raises(ValueError, match="shape"):
        masks_line(np.zeros((4, 8, 8)))


def test_errors_are_read_for_the_field_they_name() -> None:
    wrapped = "Prediction failed: Async prediction failed: InputError: reference_tags[1]: 'x1' is not a valid tag: 3"
    assert field_of(wrapped) == ("reference_tags", 1, "reference_tags[1]: 'x1' is not a valid tag: 3")
    assert field_of("prompt: mentions @dog, which is not one of the reference tags")[:2] == ("prompt", None)
    assert field_of("seed: 'abc' is not a whole number")[:2] == ("seed", None)
    assert field_of("out of GPU memory while generating 1440x1080") == (
        None,
        None,
        "out of GPU memory while generating 1440x1080",
    )


def test_prompt_mentions_are_cut_as_the_server_reads_them() -> None:
    pieces = prompt_pieces("@woman mails a@b.com from @park and @dog", ["woman", "park"])
    assert [(p.tag, p.known) for p in pieces if p.tag] == [("woman", True), ("park", True), ("dog", False)]
    assert "".join(p.text for p in pieces) == "@woman mails a@b.com from @park and @dog"


def test_log_lines_are_read() -> None:
    logs = "Using seed: 42\nGenerating...\n0%\n50%\n@woman covers 62% of the image (subject)\n"
    assert (progress(logs), used_seed(logs), tag_shares(logs)) == (50, 42, {"woman": (62, "subject")})
    assert progress("Using seed: 42\n") is None
    notes = (
        "@chr1x has no clear region in its attention map, so its reference applies to the whole image\n"
        "@ref1 and @ref2 cannot be told apart in their attention maps, so their references apply to the whole image\n"
        "@woman covers 62% of the image (subject)\n"
    )
    assert set(tag_notes(notes)) == {"chr1x", "ref1", "ref2"}
    assert tag_notes(notes)["ref2"].startswith("@ref1 and @ref2 cannot be told apart")


def test_the_form_sends_tagged_references_first_and_reads_the_seed() -> None:
    """`reference_tags` is positional: an untagged image in slot 1 goes after the tagged ones, and
    the page maps the server's `reference_tags[i]` back to the slot it came from."""
    playground = pytest.importorskip("scripts.playground", reason="run `bash scripts/setup.sh` (gradio)")
    form = playground.Form("@man", "720p", "1:1", " 7 ", [__file__, None, __file__], ["", "", "man"])
    assert form.references() == [2, 0] and form.sent_tags() == ["man"]
    assert form.inputs()["seed"] == 7 and len(form.inputs()["reference_images"]) == 2
    with pytest.raises(ValueError, match=r"^seed: 'x' is not a whole number"):
        playground.Form("a", "720p", "1:1", "x", [None] * 3, [""] * 3).inputs()


# The browser test.


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium` (Debian, as .ci/run does) "
            "or point GEN4_CHROMIUM at one"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="run `bash scripts/setup.sh` (playwright)")
    pytest.importorskip("gradio", reason="run `bash scripts/setup.sh` (requirements-playground.txt)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def start_playground(folder: Path, weights: Path) -> tuple[subprocess.Popen[str], str, Path]:
    """scripts/playground.py as the README runs it, without real weights (so on the tiny ones), in
    its own TMPDIR; the process, the page's URL and its output file."""
    port = free_port()
    tmp = folder / "tmp"
    tmp.mkdir()
    env = os.environ | OFFLINE_ENV | {"GEN4_STEPS": "2", "GEN4_DOWNLOAD_WEIGHTS": "false", "TMPDIR": str(tmp)}
    command = [sys.executable, str(ROOT / "scripts" / "playground.py"), "--port", str(port)]
    command += ["--weights-dir", str(folder / "weights"), "--tiny-weights-dir", str(weights)]
    command += ["--server-log", str(folder / "server.log")]
    said = folder / "playground.log"
    with open(said, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while f"Playground at {url}" not in said.read_text():
        assert proc.poll() is None, said.read_text()[-3000:]
        assert time.monotonic() < deadline, said.read_text()[-3000:]
        time.sleep(0.2)
    return proc, url, said


def fill(page: object, selector: str, text: str) -> None:
    page.locator(f"{selector} :is(input, textarea)").first.fill(text)  # type: ignore[attr-defined]


def coloured_fractions(image: Image.Image) -> list[float]:
    """The fraction of the image in each reference's colour (model/serving/output.py draws each
    mask as its colour over a grey copy of the image: the colour is the only chroma there)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    chroma = rgb - rgb.mean(axis=2, keepdims=True)
    colours = np.array(MASK_COLOURS[:3], dtype=np.float32)
    colours -= colours.mean(axis=1, keepdims=True)
    nearest = np.einsum("hwc,kc->hwk", chroma, colours / np.linalg.norm(colours, axis=1, keepdims=True)).argmax(axis=2)
    coloured = np.linalg.norm(chroma, axis=2) > 20
    return [float(((nearest == k) & coloured).mean()) for k in range(3)]


def test_the_playground_in_a_browser(browser: object, tiny_weights: Path, tmp_path: Path) -> None:
    """Load the page, upload three tagged references, type a prompt: unknown tags are flagged
    before sending, a bad tag comes back next to its field; then a run shows progress and live
    logs, the image at full size, each tag's mask in its colour with its share, the seed and the
    history; a cancel cancels on the server; the example fills the form. Only 127.0.0.1 is heard
    from, and stopping the playground stops its server and leaves nothing behind."""
    files = []
    for kind, fmt in (("park", "PNG"), ("woman", "JPEG"), ("man", "PNG")):
        files.append(tmp_path / f"{kind}.{fmt.lower()}")
        drawn_reference(kind).save(files[-1], fmt)
    proc, url, said = start_playground(tmp_path, tiny_weights)
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    elsewhere: list[str] = []

    def only_here(route: object) -> None:
        request_url = route.request.url  # type: ignore[attr-defined]
        if request_url.startswith((url, "data:", "blob:")):
            route.continue_()  # type: ignore[attr-defined]
        else:
            elsewhere.append(request_url)
            route.abort()  # type: ignore[attr-defined]

    page.route("**/*", only_here)
    try:
        assert "TINY RANDOM weights" in said.read_text()
        page.goto(url)
        page.wait_for_selector("#run")
        assert "started by this playground on TINY RANDOM weights" in page.inner_text("#server")
        children = psutil.Process(proc.pid).children(recursive=True)
        server = [p for p in children if "cog.server.http" in " ".join(p.cmdline())]
        assert len(server) == 1
        for p in (psutil.Process(proc.pid), server[0]):
            listening = [c.laddr.ip for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
            assert listening and set(listening) == {"127.0.0.1"}, (p.cmdline(), listening)

        # The form: three references with tags, one of them bad; a prompt; the size.
        for k, file in enumerate(files):
            page.set_input_files(f"#ref{k}-image input[type=file]", str(file))
        for k, tag in enumerate(("park", "x1", "man")):
            fill(page, f"#ref{k}-tag", tag)
        fill(page, "#prompt", "a close up portrait of @woman and @man standing in @park, looking cool")
        page.wait_for_selector("#prompt-view .mention.unknown[data-tag=woman]")
        assert "@woman" in page.inner_text("#unknown-tags")
        page.click("#resolution label:has-text('720p')")
        page.click("#aspect-ratio label:has-text('16:9')")
        page.wait_for_selector("#output-size:has-text('1280 × 720')")
        page.click("#run")
        error = page.wait_for_selector("#ref1-tag-error .field-error", timeout=60_000)
        assert error.inner_text().startswith("reference_tags[1]: 'x1' is not a valid tag"), error.inner_text()
        assert page.inner_text("#prompt-error") == "" and page.inner_text("#run-error") == ""

        # Fixed, and run: progress and live logs while it runs, then the result.
        fill(page, "#ref1-tag", "woman")
        page.wait_for_selector("#prompt-view .mention.known[data-tag=woman]")
        assert page.query_selector("#unknown-tags") is None
        page.evaluate(
            """() => { window.seen = []; const box = document.querySelector('#progress');
            new MutationObserver(() => { const bar = box.querySelector('.progress');
              const logs = document.querySelector('#logs textarea').value;
              if (bar) window.seen.push([bar.dataset.status, bar.dataset.percent, logs.includes('Using seed: ')]); })
            .observe(box, {subtree: true, childList: true, attributes: true, characterData: true}); }"""
        )
        page.click("#run")
        page.wait_for_selector("#progress .progress[data-status=succeeded]", timeout=180_000)
        seen = page.evaluate("window.seen")
        running = [s for s in seen if s[0] == "processing"]
        assert any(s[1] != "" and int(s[1]) < 100 and s[2] for s in running), seen  # progress and logs, live
        assert seen[-1][:2] == ["succeeded", "100"], seen
        assert page.inner_text("#ref1-tag-error") == ""  # the old error goes with a new run
        logs = page.input_value("#logs textarea")
        seed = used_seed(logs)
        assert seed is not None and page.inner_text("#used-seed") == str(seed)
        size = page.eval_on_selector("#output img", "img => [img.naturalWidth, img.naturalHeight, img.width]")
        assert size == [1280, 720, 1280], size  # shown at its own size, wider than the page's column
        masks_src = page.get_attribute("#masks img", "src")
        assert masks_src
        masks = Image.open(io.BytesIO(page.request.get(url + masks_src).body()))
        assert masks.size == (1280, 720)
        shares = tag_shares(logs)
        assert set(shares) == {"park", "woman", "man"}
        notes = tag_notes(logs)
        for tag in shares:
            row = page.inner_text(f"#shares .share-row[data-tag={tag}]")
            assert f"{shares[tag][1]}:" in row and f"{shares[tag][0]}%" in row, row
            assert tag not in notes or notes[tag] in row, (row, notes)  # the rule's note beside its share
        fractions = coloured_fractions(masks)
        if abs(sum(share for share, _ in shares.values()) - 100) <= 3:
            # Regions of their own: each reference's mask in its colour (park red, woman blue, man
            # green: request order), covering the share the server logged.
            for k, tag in enumerate(("park", "woman", "man")):
                assert abs(fractions[k] - shares[tag][0] / 100) < 0.05, (tag, fractions, shares)
        else:
            # The rule fell back (tiny random weights' maps are mostly flat): a tag that covers
            # the whole image says why, and the whole overlay is tinted.
            assert all(tag in notes for tag, (share, _) in shares.items() if share == 100), (shares, notes)
            assert sum(fractions) > 0.95, fractions
        history = page.query_selector_all("#history .history-row")
        assert [row.get_attribute("data-status") for row in history] == ["succeeded", "failed"]
        assert history[0].query_selector(".seed").inner_text() == str(seed)
        page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
        if SCREENSHOT:
            shutil.copy(tmp_path / "playground.png", SCREENSHOT)
        page.click("#reuse-seed")
        page.wait_for_function(f"document.querySelector('#seed input, #seed textarea').value === '{seed}'")

        # Cancel: a longer run, canceled once it is under way.
        page.click("#resolution label:has-text('1080p')")
        page.click("#run")
        page.wait_for_selector("#progress .progress[data-status=processing][data-percent]", timeout=60_000)
        page.click("#cancel")
        page.wait_for_selector("#progress .progress[data-status=canceled]", timeout=60_000)
        assert page.get_attribute("#history .history-row", "data-status") == "canceled"

        # Replicate's example, one click away, with local stand-ins for its reference photos.
        page.click("#example")
        page.wait_for_selector("#output-size:has-text('1440 × 1080')")
        page.wait_for_function("document.querySelectorAll('#prompt-view .mention.known').length === 3")
        assert page.input_value("#prompt textarea").startswith("a close up portrait of @woman and @man")
        assert [page.input_value(f"#ref{k}-tag :is(input, textarea)") for k in range(3)] == ["park", "woman", "man"]
        assert elsewhere == [], elsewhere
    finally:
        page.close()
        proc.terminate()
        proc.wait(timeout=60)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in server), "the server outlived it"
    assert not re.search(r"Traceback", said.read_text()), said.read_text()[-3000:]
    # torch makes its (empty) compile cache folder when the server imports it: not this project's.
    left = [p.name for p in (tmp_path / "tmp").iterdir() if p.name != "torchinductor_root"]
    assert left == [], f"the playground or its server left files behind: {left}"
