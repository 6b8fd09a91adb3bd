"""The benchmark's CI-sized run: it completes on tiny weights and writes its JSON and table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.contract.tables import REFERENCE_DECODE_SIDE
from scripts.lab.host_overhead import SAVINGS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fast_run(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CI-sized benchmark run (sizes, caches, PNG, reference decoding and the server), which
    the tests below read: the service is set up once for all of it."""
    out = tmp_path_factory.mktemp("benchmark")
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--fast"]
    command += ["--no-injection", "--no-turbo", "--no-compile"]
    command += ["--weights-dir", str(tiny_weights), "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=900)
    return out


def test_fast_benchmark_writes_results(fast_run: Path) -> None:
    result = json.loads((fast_run / "benchmark-tiny-cpu.json").read_text())
    assert result["complete"] is True
    assert result["weights"] == "tiny random" and result["device"].startswith("CPU")
    assert result["dtype"] == "float32" and result["settings"]["steps"] == "2"
    entries = {(row["entry"], row["references"]) for row in result["sizes"]}
    assert entries == {("720p 16:9", 0), ("720p 16:9", 3), ("1080p 4:3", 0), ("1080p 4:3", 3)}
    refined = [row for row in result["sizes"] if row["entry"] == "1080p 4:3"]
    assert all(row["refine_over_base"] > 0 and row["stages_s"]["refine"] > 0 for row in refined)
    assert result["reference_cache"]["cached_s"] < result["reference_cache"]["cold_s"]
    # Times only checked to be there and consistent: each speedup is the ratio of the reported
    # times (to its own rounding to 2 decimals).
    decode = result["reference_decode"]
    assert decode["side"] == REFERENCE_DECODE_SIDE and min(decode["cold_full_ms"], decode["cold_reduced_ms"]) > 0
    assert decode["cold_speedup"] == pytest.approx(decode["cold_full_ms"] / decode["cold_reduced_ms"], abs=0.006)
    assert decode["threads_speedup"] == pytest.approx(
        decode["cached_reduced_one_thread_ms"] / decode["cached_reduced_ms"], abs=0.006
    )
    assert decode["repeated_files_speedup"] == pytest.approx(
        decode["cached_reduced_ms"] / decode["repeated_files_ms"], abs=0.006
    )
    png = result["png"]  # sizes are exact; the times are only checked to be there
    assert png["entry"] == "1080p 4:3" and png["noise_size_over_pillow"] <= 1.001
    assert png["photo_like_size_over_pillow"] <= 1.02 and png["photo_like_ms"] > 0
    table = (fast_run / "benchmark-tiny-cpu.md").read_text()
    assert "| 1080p 4:3 | 1440x1080 | 3 |" in table and "Incomplete" not in table


def test_a_run_stopped_midway_keeps_the_parts_it_finished(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files are written after each part, so that a run cut off at a time limit (the GPU
    machine's) still returns what it measured, marked incomplete."""
    import scripts.benchmark as benchmark

    def cut_off(*args: object) -> dict:
        raise KeyboardInterrupt  # as a run stopped from outside

    monkeypatch.setattr(benchmark, "bench_server", cut_off)
    argv = ["benchmark.py", "--fast", "--no-sizes", "--no-reference-decode", "--no-injection", "--no-turbo"]
    argv += ["--no-compile", "--weights-dir", str(tiny_weights), "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(KeyboardInterrupt):
        benchmark.main()
    result = json.loads((tmp_path / "benchmark-tiny-cpu.json").read_text())
    assert result["complete"] is False and "server" not in result
    assert result["png"]["entry"] == "1080p 4:3" and result["reference_cache"]["cold_s"] > 0
    table = (tmp_path / "benchmark-tiny-cpu.md").read_text()
    assert "**Incomplete**" in table and "**png**" in table


def test_injection_op_count(tiny_weights: Path, tmp_path: Path) -> None:
    """scripts/lab/count_injection_ops.py: per-step op counts for both variants; tag localization adds
    no host reads (on a GPU each would wait for the device)."""
    out = tmp_path / "ops.json"
    command = [sys.executable, str(ROOT / "scripts" / "lab" / "count_injection_ops.py"), "--steps", "4"]
    command += ["--weights-dir", str(tiny_weights), "--size", "128x128", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["weights"] == "tiny random" and result["steps"] == 4
    plain, localized = result["plain"], result["tag_localized"]
    assert len(plain["ops_per_step"]) == len(localized["ops_per_step"]) == 4
    assert sum(localized["ops_per_step"]) == localized["ops"] and plain["ops"] > 0
    assert localized["ops_per_step"] != plain["ops_per_step"]  # the localized run took its own path
    assert localized["host_reads"] == plain["host_reads"]
    assert result["ops_ratio_localized_over_plain"] == round(localized["ops"] / plain["ops"], 3)


def test_host_overhead_builds_the_skeleton_and_switches_each_saving_off(tmp_path: Path) -> None:
    """scripts/lab/host_overhead.py: skeleton weights (built here, offline), every variant (each saving
    off in turn, all off) and their ratios, each consistent with the times it reports."""
    out = tmp_path / "host.json"
    command = [sys.executable, str(ROOT / "scripts" / "lab" / "host_overhead.py"), "--steps", "2", "--runs", "1"]
    subprocess.run([*command, "--out", str(out)], check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["arch"] == "skeleton" and result["threads"] == 1 and result["device"].startswith("CPU")
    ms = result["ms_per_step_this_cpu"]
    setups = {"this_project", "diffusers", *(f"without_{name}" for name in SAVINGS)}
    assert set(ms) == {"plain", "tag_localized"} and all(set(ms[kind]) == setups for kind in ms)
    assert all(seconds > 0 for kind in ms for seconds in ms[kind].values())
    ratio = result["diffusers_over_this_projects"]["plain"]
    assert ratio == pytest.approx(ms["plain"]["diffusers"] / ms["plain"]["this_project"], abs=0.0006)
    saving = result["saving_off_over_on"]["tag_localized"]["text_kv_once"]
    assert saving == pytest.approx(
        ms["tag_localized"]["without_text_kv_once"] / ms["tag_localized"]["this_project"], abs=0.0006
    )


@pytest.mark.parametrize(("part", "output"), [("server", "data URI"), ("server_upload", "uploaded to --upload-url")])
def test_server_overhead_is_taken_per_prediction_from_the_servers_log(fast_run: Path, part: str, output: str) -> None:
    """The real server on tiny weights, its output returned as a data URI or uploaded to a
    receiver on 127.0.0.1: every measured prediction is found in coglet's log, and the overhead's
    parts add up (end to end = HTTP and coglet + worker around the ImageService + the ImageService, per
    prediction, so the medians agree to within rounding of the spread); the floor server answers
    the same request."""
    server = json.loads((fast_run / "benchmark-tiny-cpu.json").read_text())[part]
    assert server["entry"] == "1080p 4:3" and server["output"] == output and server["server_setup_s"] > 0
    parts = server["http_and_coglet_s"] + server["worker_outside_generator_s"]
    assert 0 < server["http_and_coglet_s"] < server["server_overhead_s"] < server["end_to_end_s"]
    # The client's parse of a data URI's megabytes takes milliseconds; of an uploaded file's URL, next to none.
    parse = server["client_json_parse_s"]
    assert (parse > 0 if output == "data URI" else parse >= 0) and parse < server["end_to_end_s"]
    assert server["server_overhead_s"] == pytest.approx(parts, abs=0.05)
    assert server["served_minus_in_process_s"] == round(server["end_to_end_s"] - server["in_process_s"], 4)
    # The floor (the same request to a predictor that only copies a file of the output's bytes)
    # went through coglet, and the overhead above it is the difference of the reported values.
    assert server["output_bytes"] > 100_000 and 0 < server["floor_http_and_coglet_s"] < server["floor_end_to_end_s"]
    assert server["overhead_above_floor_s"] == round(server["server_overhead_s"] - server["floor_end_to_end_s"], 4)
    assert 0 < server["photo_like_output_bytes"] < server["output_bytes"]
    assert server["floor_photo_like_end_to_end_s"] > 0
    start = server["server_import_s"] + server["server_predictor_setup_s"]
    assert min(server["server_import_s"], server["server_predictor_setup_s"]) > 0
    assert start < server["server_setup_s"] and server["first_request_s"] > 0


def test_the_warmed_server_part_waits_for_the_idle_warm_up_then_times_two_requests(
    tiny_weights: Path, tmp_path: Path
) -> None:
    """On a CPU only with --server-warmed (it saves graph captures, which a CPU has none of)."""
    from harness.images import reference_files
    from model.serving.warmup import warmup_jobs
    from scripts.bench.server import bench_server_warmed

    warmed = bench_server_warmed(tiny_weights, 2, ("720p", "1:1"), reference_files(tmp_path))
    assert warmed["entry"] == "720p 1:1" and warmed["warmup_generations"] == len(warmup_jobs([("720p", "1:1")]))
    assert warmed["server_setup_s"] > 0 and warmed["warmup_s"] > 0
    assert warmed["first_request_after_warmup_s"] > 0 and warmed["second_request_s"] > 0


def test_generator_seconds_reads_coglets_json_log() -> None:
    """Lines of other predictions, of no prediction and that are not JSON are passed over."""
    from scripts.bench.server import generator_seconds

    def line(stamp: str, message: str, prediction: str | None = "p1") -> str:
        fields = {"message": message} | ({"prediction_id": prediction} if prediction else {})
        return json.dumps({"timestamp": f"2026-11-23T00:00:{stamp}Z", "fields": fields})

    log = "\n".join(
        [
            "a worker's stderr line",
            line("01.000000", "Starting prediction"),
            line("01.010000", "Using seed: 1"),
            line("02.000000", "Using seed: 7", "p2"),
            line("03.500000", "Generated image in 2.5sec"),
            line("04.000000", "Setup complete", None),
        ]
    )
    assert generator_seconds(log) == {"p1": pytest.approx(2.49)}


def test_startup_phases_read_coglets_json_log() -> None:
    """The worker's import and Predictor.setup() from coglet's own lines; a phase whose end is
    missing (a server stopped during setup) is left out."""
    from scripts.bench.server import startup_phases

    def line(stamp: str, message: str) -> str:
        return json.dumps({"timestamp": f"2026-11-23T00:00:{stamp}Z", "fields": {"message": message}})

    log = [line("01.000000", "Loading predictor"), "stderr", line("12.500000", "Running setup")]
    assert startup_phases("\n".join(log)) == {"import": 11.5}
    log += [line("17.250000", "Setup complete"), line("17.300000", "Server ready")]
    assert startup_phases("\n".join(log)) == {"import": 11.5, "setup": 4.75}
