"""The benchmark's CI-sized run: it completes on tiny weights and writes its JSON and table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_fast_benchmark_writes_results(tiny_weights: Path, tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--fast"]
    command += ["--no-server", "--no-injection", "--no-turbo", "--no-compile"]
    command += ["--weights-dir", str(tiny_weights), "--out", str(tmp_path)]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    result = json.loads((tmp_path / "benchmark-tiny-cpu.json").read_text())
    assert result["weights"] == "tiny random" and result["device"].startswith("CPU")
    assert result["dtype"] == "float32" and result["settings"]["steps"] == "2"
    entries = {(row["entry"], row["references"]) for row in result["sizes"]}
    assert entries == {("720p 16:9", 0), ("720p 16:9", 3), ("1080p 4:3", 0), ("1080p 4:3", 3)}
    refined = [row for row in result["sizes"] if row["entry"] == "1080p 4:3"]
    assert all(row["refine_over_base"] > 0 and row["stages_s"]["refine"] > 0 for row in refined)
    assert result["reference_cache"]["cached_s"] < result["reference_cache"]["cold_s"]
    assert "| 1080p 4:3 | 1440x1080 | 3 |" in (tmp_path / "benchmark-tiny-cpu.md").read_text()


def test_injection_op_count(tiny_weights: Path, tmp_path: Path) -> None:
    """scripts/count_injection_ops.py: per-step op counts for both variants; tag localization adds
    no host reads (on a GPU each would wait for the device)."""
    out = tmp_path / "ops.json"
    command = [sys.executable, str(ROOT / "scripts" / "count_injection_ops.py"), "--steps", "4"]
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


def test_host_overhead_builds_the_skeleton_and_compares_both_forwards(tmp_path: Path) -> None:
    """scripts/host_overhead.py: skeleton weights (built here, offline), the four variants and
    their ratios, each consistent with the times it reports."""
    out = tmp_path / "host.json"
    command = [sys.executable, str(ROOT / "scripts" / "host_overhead.py"), "--steps", "2", "--runs", "1"]
    subprocess.run([*command, "--out", str(out)], check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["arch"] == "skeleton" and result["threads"] == 1 and result["device"].startswith("CPU")
    ms = result["ms_per_step_this_cpu"]
    assert all(ms[kind][forward] > 0 for kind in ms for forward in ("this_project", "diffusers"))
    assert set(ms) == {"plain", "tag_localized"}
    ratio = result["diffusers_forward_over_this_projects"]["plain"]
    assert ratio == pytest.approx(ms["plain"]["diffusers"] / ms["plain"]["this_project"], abs=0.002)
