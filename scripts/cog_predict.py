"""`cog predict` without Docker or the cog CLI: one prediction through the real Cog server.

    python scripts/cog_predict.py -i prompt="@woman reading in @park" -i aspect_ratio=4:3 \\
        -i reference_tags=woman -i reference_images=@woman.jpg \\
        -i reference_tags=park -i reference_images=@park.jpg -o out.png
    python scripts/cog_predict.py --json @inputs.json          # or --json '{...}', or --json @- (stdin)
    python scripts/cog_predict.py --url http://localhost:5000 -i prompt=...   # a server already up

Inputs as `cog predict` takes them, read against the model's schema (.cog/openapi_schema.json):
`-i name=value`, repeated for each item of a list (one value of a list input is a list of one);
`@path` is a local file, sent as a data: URI, but only for an image input: a prompt that starts
with `@woman` is text. (Cog's own CLI reads any `-i` value that starts with `@` as a file, the
prompt included, and sends a single `@file` as one string where this model takes a list.) In
`--json`, an image input's `"@path"` (or a list item's) is a local file in the same way.

Without `--url` it starts the server on 127.0.0.1 (scripts/serve.py) with the weights of
`--weights-dir` and the `-e NAME=value` settings, waits until READY, predicts, and stops it; the
server's own log goes to `--server-log`. The prediction's logs go to stderr, the image to `-o`
(default `output.<ext>` here, as cog writes). Exit status: 0 when the prediction succeeded, 1 when
it failed (its error, which names the field, is the last line), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import mimetypes
import os
import sys
import tempfile
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from harness.server import CogServer, post_prediction  # noqa: E402

log = logging.getLogger("cog_predict")
SCHEMA = ROOT / ".cog" / "openapi_schema.json"


class UsageError(Exception):
    """A bad command line: the flag, the value and what is allowed."""


def input_properties(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The model's inputs by name, each with its `$ref`s (enums) resolved to their schema."""
    components = schema["components"]["schemas"]

    def resolve(prop: dict[str, Any]) -> dict[str, Any]:
        for ref in prop.get("allOf", []):
            prop = {**components[ref["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in prop.items() if k != "allOf"}}
        return prop

    return {name: resolve(prop) for name, prop in components["Input"]["properties"].items()}


def is_file(prop: dict[str, Any]) -> bool:
    """An input that is a file (Cog's `Path`): a URI string."""
    return prop.get("type") == "string" and prop.get("format") == "uri"


def file_uri(path: str, field: str) -> str:
    """A local file as the data: URI a Cog server takes."""
    file = Path(path).expanduser()
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"{field}: cannot read {path!r} ({exc.strerror or exc})") from None
    mime = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def scalar(value: Any, prop: dict[str, Any], field: str) -> Any:
    """One value for `prop`: `@path` read as a file where `prop` is a file, digits as an integer."""
    if is_file(prop) and isinstance(value, str) and value.startswith("@"):
        return file_uri(value[1:], field)
    if prop.get("type") == "integer" and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"{field}: {value!r} is not an integer") from None
    return value


def known(name: str, properties: dict[str, dict[str, Any]], field: str) -> dict[str, Any]:
    if name not in properties:
        raise UsageError(f"{field}: the model has no input {name!r}; its inputs: {', '.join(properties)}")
    return properties[name]


def flag_inputs(flags: Iterable[str], properties: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`-i name=value` flags as the request's inputs; a list input collects its flags in order."""
    inputs: dict[str, Any] = {}
    for flag in flags:
        name, sep, value = flag.partition("=")
        field = f"-i {flag[:60]}"
        if not sep:
            raise UsageError(f"{field}: expected name=value")
        prop = known(name, properties, field)
        if prop.get("type") == "array":
            inputs.setdefault(name, []).append(scalar(value, prop.get("items", {}), field))
        elif name in inputs:
            raise UsageError(f"{field}: {name} is given twice, and it is not a list")
        else:
            inputs[name] = scalar(value, prop, field)
    return inputs


def json_inputs(text: str, properties: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`--json`'s object (inline, `@file` or `@-` for stdin) with image inputs' `@path`s read."""
    if text.startswith("@"):
        source = text[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text()
        except OSError as exc:
            raise UsageError(f"--json: cannot read {source!r} ({exc.strerror or exc})") from None
    try:
        given = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--json: not valid JSON ({exc})") from None
    if not isinstance(given, dict):
        raise UsageError('--json: expected a JSON object of inputs, such as {"prompt": "..."}')
    inputs = {}
    for name, value in given.items():
        prop = known(name, properties, f"--json {name}")
        if prop.get("type") == "array" and isinstance(value, list):
            inputs[name] = [scalar(v, prop.get("items", {}), f"--json {name}[{i}]") for i, v in enumerate(value)]
        else:
            inputs[name] = scalar(value, prop, f"--json {name}")
    return inputs


def output_bytes(output: str) -> tuple[bytes, str]:
    """The output URI's bytes and its file extension: a data: URI, or an uploaded file's URL."""
    if output.startswith("data:"):
        header, _, payload = output.partition(",")
        mime = header[5:].split(";", 1)[0]
        try:
            data = base64.b64decode(payload, validate=True)
        except binascii.Error as exc:
            raise RuntimeError(f"the output is not a valid data URI ({exc})") from None
        return data, mimetypes.guess_extension(mime) or ""
    response = requests.get(output, timeout=600)
    response.raise_for_status()
    return response.content, Path(urllib.parse.urlparse(output).path).suffix


def save_output(output: str, path: Path | None) -> Path:
    """Write the prediction's output to `path`, or to `output.<ext>` in the working directory."""
    data, ext = output_bytes(output)
    path = path or Path(f"output{ext}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def failure(body: dict[str, Any]) -> str:
    """Why a prediction did not succeed, in a line: coglet's error (which begins "Prediction
    failed:" and holds the model's message naming the field), or each field the schema refused."""
    if body.get("error"):
        return str(body["error"])
    detail = body.get("detail")
    if isinstance(detail, list):  # a 422: the inputs against the schema
        return "Inputs refused: " + "; ".join(
            f"{'.'.join(map(str, d.get('loc', [])[2:]))}: {d.get('msg')}" for d in detail
        )
    return f"Prediction {body.get('status', 'refused')}: {detail or body}"


def setup_lines(health: dict[str, Any]) -> list[str]:
    """What the model printed at setup (it names the weights it loaded), from /health-check."""
    logs = (health.get("setup") or {}).get("logs") or ""
    prefix = "[coglet::setup] "
    return [line[len(prefix) :] for line in logs.splitlines() if line.startswith(prefix)]


def predict_on_new_server(
    inputs: dict[str, Any], weights: Path, env: dict[str, str], server_log: Path, setup_timeout: float = 600
) -> dict[str, Any]:
    """Start the Cog server (its log in `server_log`), wait until READY, run one sync prediction,
    stop the server; the finished prediction's JSON. Raises RuntimeError or TimeoutError when the
    server does not get READY."""
    log.info("Starting the Cog server (weights: %s; its log: %s) and running setup()...", weights, server_log)
    with open(server_log, "w") as server_output:
        server = CogServer(weights, log=server_output, extra_env=env)
    try:
        for line in setup_lines(server.wait_ready(timeout=setup_timeout)):
            log.info("%s", line)
        log.info("Running prediction...")
        return server.predict(inputs).json()
    finally:
        server.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", action="append", default=[], metavar="NAME=VALUE", help="an input")
    parser.add_argument("--json", help="the inputs as a JSON object: inline, @file, or @- for stdin")
    parser.add_argument("-o", "--output", type=Path, help="where to write the image (default: output.<ext>)")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE", help="a server setting")
    parser.add_argument("--url", help="send the prediction to this running Cog server instead of starting one")
    parser.add_argument("--weights-dir", type=Path, default=Path(os.environ.get("WEIGHTS_DIR", ROOT / "weights")))
    parser.add_argument("--setup-timeout", type=float, default=3600, help="seconds (a first start downloads 9 GB)")
    parser.add_argument("--server-log", type=Path, default=Path(tempfile.gettempdir()) / "gen4-cog-predict.log")
    args = parser.parse_args(argv)
    if args.json is not None and args.input:
        parser.error("give the inputs with --json or with -i, not both")
    if args.url and args.env:
        parser.error("-e sets a server started here; a server at --url keeps its own settings")
    for pair in args.env:
        if "=" not in pair:
            parser.error(f"-e {pair}: expected NAME=value")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    properties = input_properties(json.loads(SCHEMA.read_text()))
    try:
        inputs = json_inputs(args.json, properties) if args.json is not None else flag_inputs(args.input, properties)
    except UsageError as exc:
        print(f"cog_predict.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.url:
            body = post_prediction(args.url.rstrip("/"), inputs).json()
        else:
            env = dict(pair.partition("=")[::2] for pair in args.env)
            body = predict_on_new_server(inputs, args.weights_dir, env, args.server_log, args.setup_timeout)
    except (RuntimeError, TimeoutError) as exc:  # setup failed, or never got READY
        log.error("The server did not start: %s (its log: %s)", exc, args.server_log)
        return 1
    except requests.RequestException as exc:  # --url: nothing there, or not a Cog server's answer
        log.error("No prediction from %s: %s", args.url, exc)
        return 1
    if body.get("logs"):
        sys.stderr.write(body["logs"] if body["logs"].endswith("\n") else body["logs"] + "\n")
    if body.get("status") != "succeeded":
        log.error("%s", failure(body))
        return 1
    try:
        path = save_output(body["output"], args.output)
    except (requests.RequestException, RuntimeError, OSError) as exc:
        log.error("The prediction succeeded, but its output could not be saved: %s", exc)
        return 1
    log.info("Written output to %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
