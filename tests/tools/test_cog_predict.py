"""scripts/cog_predict.py: `cog predict`'s flags read against the model's schema, and one
prediction through the real Cog server, started by the script or already running."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from PIL import Image

from harness.server import CogServer, UploadReceiver, free_port
from scripts.cog_predict import SCHEMA, UsageError, flag_inputs, input_properties, json_inputs, save_output
from tests.conftest import OFFLINE_ENV, ROOT, png_bytes

SCRIPT = ROOT / "scripts" / "cog_predict.py"


@pytest.fixture(scope="module")
def properties() -> dict:
    return input_properties(json.loads(SCHEMA.read_text()))


def decoded(uri: str) -> tuple[str, bytes]:
    header, payload = uri.split(",", 1)
    return header, base64.b64decode(payload)


def test_flags_are_typed_by_the_schema_and_files_only_where_an_image_goes(tmp_path: Path, properties: dict) -> None:
    woman = tmp_path / "woman.jpg"
    woman.write_bytes(png_bytes(fmt="JPEG"))
    flags = ["prompt=@woman reading", "reference_tags=woman", f"reference_images=@{woman}", "seed=7"]
    flags.append("aspect_ratio=1:1")
    inputs = flag_inputs(flags, properties)
    # A prompt that starts with a mention is text; one reference is a list of one; seed an integer.
    assert inputs["prompt"] == "@woman reading" and inputs["seed"] == 7 and inputs["aspect_ratio"] == "1:1"
    assert inputs["reference_tags"] == ["woman"]
    (image,) = inputs["reference_images"]
    assert decoded(image) == ("data:image/jpeg;base64", woman.read_bytes())
    # Repeated flags of a list keep their order; a URL is sent as it is.
    two = flag_inputs(["reference_tags=a1b", "reference_tags=c2d", "reference_images=https://x.test/a.png"], properties)
    assert two == {"reference_tags": ["a1b", "c2d"], "reference_images": ["https://x.test/a.png"]}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["colour=red"], "-i colour=red: the model has no input 'colour'; its inputs: seed, prompt, resolution"),
        (["seed=abc"], "-i seed=abc: 'abc' is not an integer"),
        (["prompt"], "-i prompt: expected name=value"),
        (["prompt=a", "prompt=b"], "-i prompt=b: prompt is given twice, and it is not a list"),
        (["reference_images=@missing.jpg"], "-i reference_images=@missing.jpg: cannot read 'missing.jpg'"),
    ],
)
def test_a_bad_flag_names_itself(properties: dict, flags: list[str], message: str) -> None:
    with pytest.raises(UsageError) as error:
        flag_inputs(flags, properties)
    assert str(error.value).startswith(message), str(error.value)


def test_json_reads_files_for_image_inputs_only(tmp_path: Path, properties: dict) -> None:
    park = tmp_path / "park.png"
    park.write_bytes(png_bytes((300, 200), "green"))
    given = {"prompt": "@park at dusk", "reference_tags": ["park"], "reference_images": [f"@{park}"], "seed": 3}
    inputs = json_inputs(json.dumps(given), properties)
    assert inputs["prompt"] == "@park at dusk" and inputs["seed"] == 3
    assert decoded(inputs["reference_images"][0]) == ("data:image/png;base64", park.read_bytes())
    (tmp_path / "inputs.json").write_text(json.dumps(given))
    assert json_inputs(f"@{tmp_path / 'inputs.json'}", properties) == inputs
    with pytest.raises(UsageError, match=r"^--json: expected a JSON object"):
        json_inputs("[1, 2]", properties)
    with pytest.raises(UsageError, match=r"^--json reference_images\[0\]: cannot read 'nope.png'"):
        json_inputs('{"reference_images": ["@nope.png"]}', properties)


def test_an_uploaded_output_is_fetched_from_its_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `--upload-url` the server returns the file's URL: the script downloads it from there."""
    receiver = UploadReceiver()
    try:
        receiver.files["/uploads/gen4-5-abc.webp"] = webp = png_bytes((64, 48), "navy", fmt="WEBP")
        monkeypatch.chdir(tmp_path)
        assert save_output(receiver.url + "gen4-5-abc.webp", None) == Path("output.webp")
        assert (tmp_path / "output.webp").read_bytes() == webp
        with pytest.raises(requests.HTTPError, match="404"):
            save_output(receiver.url + "gone.png", tmp_path / "gone.png")
    finally:
        receiver.stop()
    assert not (tmp_path / "gone.png").exists()


def run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | OFFLINE_ENV | {"GEN4_DOWNLOAD_WEIGHTS": "0"}
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_it_starts_the_server_and_writes_the_image(tiny_weights: Path, tmp_path: Path) -> None:
    (tmp_path / "woman.jpg").write_bytes(png_bytes((300, 400), "pink", fmt="JPEG"))
    args = ["--weights-dir", str(tiny_weights), "-e", "GEN4_STEPS=2", "--server-log", str(tmp_path / "server.log")]
    args += ["-i", "prompt=@woman reading", "-i", "reference_tags=woman", "-i", "reference_images=@woman.jpg"]
    args += ["-i", "resolution=720p", "-i", "aspect_ratio=3:4", "-i", "seed=11", "-o", "out/image.png"]
    done = run_script(args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with Image.open(tmp_path / "out" / "image.png") as image:
        assert image.format == "PNG" and image.size == (720, 960)
    said = done.stderr.splitlines()
    assert any(line.startswith("Loaded SDXL + IP-Adapter Plus with TINY RANDOM weights") for line in said), said
    for line in ("Using seed: 11", "Using reference tags: woman", "Reference encodings: 0 cached, 1 encoded"):
        assert line in said, said
    assert said[-1] == "Written output to out/image.png"
    assert (tmp_path / "server.log").stat().st_size > 0


def test_with_url_it_uses_a_running_server_and_says_what_it_refused(cog_server: CogServer, tmp_path: Path) -> None:
    base = ["--url", cog_server.url, "-i", "resolution=720p", "-i", "aspect_ratio=1:1"]
    done = run_script([*base, "-i", "prompt=a lighthouse", "-i", "seed=2"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with Image.open(tmp_path / "output.png") as image:  # cog's default name, its extension the output's
        assert image.size == (720, 720)
    # Refused by the model (names the field) and by the schema (coglet's 422, each field named).
    (tmp_path / "pink.png").write_bytes(png_bytes((300, 400), "pink"))
    refused = run_script(
        [*base, "-i", "prompt=@ab x", "-i", "reference_tags=ab", "-i", "reference_images=@pink.png"], tmp_path
    )
    assert refused.returncode == 1
    last = refused.stderr.splitlines()[-1]
    assert last.startswith("Prediction failed") and "reference_tags[0]: 'ab'" in last, refused.stderr
    invalid = run_script(["--url", cog_server.url, "-i", "prompt=x", "-i", "aspect_ratio=5:4"], tmp_path)
    assert invalid.returncode == 1
    assert invalid.stderr.splitlines()[-1].startswith("Inputs refused: aspect_ratio: "), invalid.stderr
    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = run_script(["--url", nobody, "-i", "prompt=x"], tmp_path)
    assert unreachable.returncode == 1
    assert unreachable.stderr.splitlines()[-1].startswith(f"No prediction from {nobody}: "), unreachable.stderr
