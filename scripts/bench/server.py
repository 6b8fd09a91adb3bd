"""The benchmark's server parts: the same request end to end through the real Cog server, its
overhead against coglet's floor (a predictor that only copies a file), and the idle warm-up."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from harness.images import photo_like
from harness.injection import PROMPT, TAGS
from harness.server import CogServer, UploadReceiver
from model.engine.plan import plan_for
from model.serving.service import ImageService
from scripts.bench.common import interleaved, quiet, quiet_predict, request_for

# The first and the last line that ImageService.run writes to a prediction's logs (model/serving/service.py).
GENERATOR_FIRST_LINE = "Using seed:"


GENERATOR_LAST_LINE = "Generated image in"


# predict.py's Predictor with the model taken out (bench_server's floor).
FLOOR_PREDICTOR = "scripts/lab/floor_predictor.py:FloorPredictor"


def generator_seconds(server_log: str) -> dict[str, float]:
    """Seconds from the ImageService's first log line to its last, per prediction id, by coglet's own
    timestamps in its JSON log: the model's part of each served prediction."""
    first: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for line in server_log.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the worker's own stderr lines are not JSON
        fields = record.get("fields") or {}
        prediction, message = fields.get("prediction_id"), str(fields.get("message", ""))
        if prediction is None:
            continue
        stamp = dt.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
        if message.startswith(GENERATOR_FIRST_LINE):
            first[prediction] = stamp
        elif message.startswith(GENERATOR_LAST_LINE) and prediction in first:
            seconds[prediction] = stamp - first[prediction]
    return seconds


# coglet's own log lines (its JSON log) that bound the phases of a server's start.
STARTUP_LINES = {"import": ("Loading predictor", "Running setup"), "setup": ("Running setup", "Setup complete")}


def startup_phases(server_log: str) -> dict[str, float]:
    """Seconds of each phase of the server's start, by coglet's timestamps: the worker's import of
    predict.py (torch, diffusers, ...) and Predictor.setup(), the two that time-to-READY is made of."""
    marks = {mark for pair in STARTUP_LINES.values() for mark in pair}
    stamps: dict[str, float] = {}
    for line in server_log.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        message = str((record.get("fields") or {}).get("message", ""))
        if message in marks and message not in stamps:
            stamps[message] = dt.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
    return {
        phase: round(stamps[end] - stamps[start], 2)
        for phase, (start, end) in STARTUP_LINES.items()
        if start in stamps and end in stamps
    }


def served_inputs(entry: tuple[str, str], references: list[Path]) -> dict:
    """The benchmark's request as a Cog server takes it: the references as data URIs."""
    return {
        "prompt": PROMPT,
        "resolution": entry[0],
        "aspect_ratio": entry[1],
        "reference_tags": TAGS,
        "reference_images": ["data:image/png;base64," + base64.b64encode(p.read_bytes()).decode() for p in references],
        "seed": 1,
    }


def server_env(steps: int, folder: Path, warmup: str) -> dict[str, str]:
    """A benchmarked server's settings: its steps, its idle warm-up (GEN4_WARMUP), and its own
    queue state file in `folder` (a server already running on this machine keeps its own)."""
    return {"GEN4_STEPS": str(steps), "GEN4_QUEUE_STATE_FILE": str(folder / "queue.json"), "GEN4_WARMUP": warmup}


def bench_server(
    service: ImageService,
    weights: Path,
    steps: int,
    entry: tuple[str, str],
    refs: list[Path],
    runs: int,
    upload: bool = False,
) -> dict:
    """The same request end to end through the real Cog server and in this process, interleaved
    (after a warm-up of each). The overhead is taken per prediction: its end-to-end time minus the
    ImageService's own time inside the worker (from coglet's log timestamps), so that the run-to-run
    spread of the generation itself (seconds on a host-bound GPU) does not hide a few milliseconds.
    The difference of the medians, served minus in process, is kept for comparison. End to end
    runs from sending the request to holding the whole response (requests reads the body before
    it returns); the client's parse of its JSON, 10 ms or more for a data URI's megabytes, is
    the client's work and is reported apart. The output comes back as a data URI (the server as
    `docker run` starts it), or with `upload` as a URL after Cog PUTs the file to a receiver on
    127.0.0.1 (`--upload-url`, as Replicate serves it).

    Interleaved with them, the floor: the same request to a second server of the same interface
    whose predictor only copies a file of the same output's bytes (scripts/lab/floor_predictor.py),
    so coglet's own cost for this request and its output, which no predictor can go below; and a
    third such server whose file is a photo-like image of the same size, written as outputs are
    (random weights make noise, PNG's largest case; a real output is nearer the photo-like)."""
    inputs = served_inputs(entry, refs)
    request = request_for(entry, refs)
    # (prediction id, end to end, coglet's predict_time, the client's parse of the response)
    served_runs: list[tuple[str, float, float, float]] = []
    floors: dict[str, list[tuple[str, float, float, float]]] = {"floor": [], "floor_photo_like": []}
    with tempfile.TemporaryDirectory() as folder:
        log_path = Path(folder) / "server.log"
        # The floors' outputs: the bytes the real server returns for this request (same seed),
        # and a photo-like image of its size through the same writer.
        with quiet():
            made = service.predict(request)
        photo = service.output.write(photo_like(*plan_for(*entry).target), seed=0)
        floor_files = {}
        for name, source in (("floor", made), ("floor_photo_like", photo)):
            floor_files[name] = Path(folder) / name / source.name
            floor_files[name].parent.mkdir()
            floor_files[name].write_bytes(source.read_bytes())
        output_bytes = {name: path.stat().st_size for name, path in floor_files.items()}
        with open(log_path, "w") as server_log, open(Path(folder) / "floor.log", "w") as floor_log:
            # No idle warm-up: between its requests it would generate on the GPU that the in-process
            # runs and the floors are timed on (server_warmed measures it).
            env = server_env(steps, Path(folder), warmup="none")
            receiver = UploadReceiver() if upload else None
            upload_url = receiver.url if receiver else None
            servers = [CogServer(weights, log=server_log, extra_env=env, upload_url=upload_url)]
            try:
                setup_started = time.perf_counter()
                servers[0].wait_ready(timeout=900)
                setup_s = time.perf_counter() - setup_started
                for path in floor_files.values():
                    floor_env = {"COG_PREDICT_TYPE_STUB": FLOOR_PREDICTOR, "BENCH_FLOOR_OUTPUT": str(path)}
                    servers.append(CogServer(weights, log=floor_log, extra_env=floor_env, upload_url=upload_url))
                for server in servers[1:]:
                    server.wait_ready(timeout=900)

                def served(server: CogServer, into: list[tuple[str, float, float, float]]) -> None:
                    started = time.perf_counter()
                    response = server.predict(inputs)  # returns with the whole body read
                    seconds = time.perf_counter() - started
                    body = response.json()  # the client's work, timed apart
                    parse_s = time.perf_counter() - started - seconds
                    assert body["status"] == "succeeded", body.get("error")
                    assert not receiver or body["output"].startswith(receiver.url), body["output"][:80]
                    into.append((body["id"], seconds, body["metrics"]["predict_time"], parse_s))

                # Rounded once, here, so that the reported difference is the difference of the reported values.
                served_s, local_s, floor_s, photo_floor_s = (
                    round(s, 4)
                    for s in interleaved(
                        runs,
                        lambda: served(servers[0], served_runs),
                        lambda: quiet_predict(service, request),
                        lambda: served(servers[1], floors["floor"]),
                        lambda: served(servers[2], floors["floor_photo_like"]),
                    )
                )
            finally:
                for server in servers:
                    server.stop()
                if receiver:
                    receiver.stop()
        server_log_text = log_path.read_text()
        model_s = generator_seconds(server_log_text)
        phases = startup_phases(server_log_text)
    measured, floor = served_runs[1:], floors["floor"][1:]  # without the warm-ups
    missing = [pid for pid, *_ in measured if pid not in model_s]
    if missing:
        raise RuntimeError(f"the server log has no ImageService lines for predictions {missing}")
    overhead_s = round(statistics.median(e2e - model_s[pid] for pid, e2e, *_ in measured), 4)
    return {
        "entry": f"{entry[0]} {entry[1]}",
        "output": "uploaded to --upload-url" if upload else "data URI",
        "output_bytes": output_bytes["floor"],
        # From starting the server to READY ...
        "server_setup_s": round(setup_s, 2),
        # ... of which the worker's import of predict.py and Predictor.setup() (coglet's log).
        "server_import_s": phases.get("import"),
        "server_predictor_setup_s": phases.get("setup"),
        # The server's first request after READY, without the idle warm-up: on CUDA it captures its graphs.
        "first_request_s": round(served_runs[0][1], 4),
        "end_to_end_s": served_s,
        "in_process_s": local_s,
        "served_minus_in_process_s": round(served_s - local_s, 4),
        # Per prediction, then the median: everything but the ImageService (HTTP, coglet, inputs
        # decoded and validated, the queue's thread hops, the output encoded as a data URI) ...
        "server_overhead_s": overhead_s,
        # ... of which HTTP and coglet around the worker's predict() ...
        "http_and_coglet_s": round(statistics.median(e2e - predict for _, e2e, predict, _ in measured), 4),
        # ... and the worker's predict() around the ImageService.
        "worker_outside_generator_s": round(
            statistics.median(predict - model_s[pid] for pid, _, predict, _ in measured), 4
        ),
        # Not in the above: the client's json.loads of the response (a data URI's megabytes).
        "client_json_parse_s": round(statistics.median(parse for *_, parse in measured), 4),
        # The floor, end to end (a file copy its only work), of which HTTP and coglet around its
        # predict(); and the overhead above it: what this project's code adds to coglet's cost.
        "floor_end_to_end_s": floor_s,
        "floor_http_and_coglet_s": round(statistics.median(e2e - predict for _, e2e, predict, _ in floor), 4),
        "overhead_above_floor_s": round(overhead_s - floor_s, 4),
        # The floor with a photo-like output of the same size instead of this noise.
        "photo_like_output_bytes": output_bytes["floor_photo_like"],
        "floor_photo_like_end_to_end_s": photo_floor_s,
    }


WARMUP_DONE = re.compile(r"Warm-up done: (\d+) generations in ([\d.]+)sec")


def bench_server_warmed(weights: Path, steps: int, entry: tuple[str, str], refs: list[Path]) -> dict:
    """A server with the idle warm-up of the request's entry (GEN4_WARMUP): how long the warm-up
    takes after READY, then the first and second requests once it has ended, to set against the
    `server` part's first request (no warm-up) and its end to end."""
    inputs = served_inputs(entry, refs)
    with tempfile.TemporaryDirectory() as folder:
        log_path = Path(folder) / "server.log"
        with open(log_path, "w") as server_log:
            server = CogServer(
                weights, log=server_log, extra_env=server_env(steps, Path(folder), warmup=" ".join(entry))
            )
            try:
                started = time.perf_counter()
                server.wait_ready(timeout=900)
                ready_s = time.perf_counter() - started
                deadline = time.monotonic() + 900
                while not (done := WARMUP_DONE.search(text := log_path.read_text())):
                    if time.monotonic() > deadline or "Warm-up failed" in text:
                        raise RuntimeError(f"the idle warm-up did not end; server log: {text[-2000:]}")
                    time.sleep(0.1)
                requests_s = []
                for _ in range(2):
                    clock = time.perf_counter()
                    body = server.predict(inputs).json()
                    requests_s.append(round(time.perf_counter() - clock, 4))
                    assert body["status"] == "succeeded", body.get("error")
            finally:
                server.stop()
    return {
        "entry": f"{entry[0]} {entry[1]}",
        "server_setup_s": round(ready_s, 2),
        "warmup_generations": int(done.group(1)),
        # The warm-up's own account (GPU time while idle; READY came before it).
        "warmup_s": float(done.group(2)),
        "first_request_after_warmup_s": requests_s[0],
        "second_request_s": requests_s[1],
    }
