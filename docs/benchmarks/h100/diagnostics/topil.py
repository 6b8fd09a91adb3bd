"""Device scratch: decoded image to PIL, diffusers' postprocess vs model.generate.to_pil, 1440x1080."""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))
import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor
from model.generate import to_pil

vae = AutoencoderKL.from_pretrained(Path(sys.argv[1]) / "sdxl-vae-fp16-fix", torch_dtype=torch.float16).to("cuda")
processor = VaeImageProcessor(vae_scale_factor=8)
with torch.inference_mode():
    latents = torch.randn(1, 4, 135, 180, device="cuda", dtype=torch.float16)
    pixels = vae.decode(latents, return_dict=False)[0]
    torch.cuda.synchronize()
    ways = {
        "diffusers_postprocess": lambda: processor.postprocess(pixels, output_type="pil")[0],
        "to_pil": lambda: to_pil(processor, pixels),
    }
    same = np.array_equal(np.asarray(ways["to_pil"]()), np.asarray(ways["diffusers_postprocess"]()))
    times = {k: [] for k in ways}
    for _ in range(20):
        for k, fn in ways.items():
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t)
    print("pixel-identical:", same, "| size", tuple(pixels.shape))
    for k, v in times.items():
        print(
            f"{k}: median {statistics.median(v) * 1000:.1f} ms, min {min(v) * 1000:.1f}, "
            f"max {max(v) * 1000:.1f} (20 interleaved)"
        )
