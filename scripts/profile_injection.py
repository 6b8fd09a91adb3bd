"""Profile plain vs tag-localized IP-Adapter denoising (torch.profiler) on full-size random weights
on CUDA: 1152x864, 10 steps, 3 references. Output: docs/benchmarks/h100/profile-injection.txt.

    python scripts/profile_injection.py
"""

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, ".")
import torch
from PIL import Image
from torch.profiler import ProfilerActivity, profile

import scripts.benchmark as b
from model.prompt import parse_prompt
from model.regions import RegionConfig, RegionState, bind_references
from model.service import Generator
from model.settings import Settings
from model.tokens import mention_positions

w = Path(tempfile.mkdtemp())
subprocess.run(
    [sys.executable, "scripts/make_random_weights.py", str(w), "--size", "full", "--device", "cuda"],
    check=True,
    capture_output=True,
)
g = Generator(Settings(weights_dir=w, steps=10))
pipe, rt = g.pipe, g.runtime
emb = (
    g.encoder.encode([Image.new("RGB", (512, 512), c) for c in ("green", "pink", "navy")])
    .ip_adapter_embeds(guidance=True)
    .to(rt.device, rt.dtype)
)
p = parse_prompt(b.PROMPT)
bind = bind_references(list(b.TAGS), p, mention_positions(p, pipe.tokenizer))
pipe.set_ip_adapter_scale(0.6)


def run(loc, steps=10):
    r = RegionState(bind, RegionConfig(), steps, (108, 144))
    pipe(
        prompt=p.text,
        width=1152,
        height=864,
        num_inference_steps=steps,
        guidance_scale=5.0,
        ip_adapter_image_embeds=[emb],
        cross_attention_kwargs={"region": r} if loc else None,
        callback_on_step_end=(lambda a, i, t, kw: r.end_step() or kw) if loc else None,
        output_type="latent",
    )


for loc in (False, True):
    run(loc)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run(loc)
        torch.cuda.synchronize()
    ka = prof.key_averages()
    print("=== localized" if loc else "=== plain", "kernels:", sum(e.count for e in ka if e.device_type.name == "CUDA"))
    print(ka.table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
    print(ka.table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))
    syncs = [
        (e.key, e.count)
        for e in ka
        if "ynchronize" in e.key or e.key in ("aten::item", "aten::_local_scalar_dense", "aten::nonzero")
    ]
    print("syncs", syncs)
