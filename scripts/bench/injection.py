"""The benchmark's injection part: tag-localized against plain multi-image IP-Adapter, in time and in
ops per step."""

from __future__ import annotations

from harness.injection import count_injection_ops, injection_runner
from model.serving.service import ImageService
from scripts.bench.common import interleaved


def bench_injection(service: ImageService, steps: int, runs: int, width: int, height: int) -> dict:
    """Plain multi-image IP-Adapter vs tag-localized, denoising only, interleaved; and the ops
    each dispatches (counted once, outside the timing)."""
    run = injection_runner(service, steps, width, height)
    plain, localized = interleaved(runs, lambda: run(False), lambda: run(True))
    counts = count_injection_ops(run)
    return {
        "size": f"{width}x{height}",
        "steps": steps,
        "references": 3,
        "plain_ip_adapter_median_s": round(plain, 4),
        "tag_localized_median_s": round(localized, 4),
        "ratio_localized_over_plain": round(localized / plain, 3),
        "plain_ops": counts["plain"]["ops"],
        "tag_localized_ops": counts["tag_localized"]["ops"],
        "ops_ratio_localized_over_plain": counts["ops_ratio_localized_over_plain"],
        "host_reads_plain": sum(counts["plain"]["host_reads"].values()),
        "host_reads_tag_localized": sum(counts["tag_localized"]["host_reads"].values()),
    }
