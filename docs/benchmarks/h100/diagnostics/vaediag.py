"""Device scratch: VAE decode at 1440x1080 and a whole 1080p 4:3 prediction, with and without
cudnn.benchmark and a channels_last VAE."""

import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))
import torch
from model.service import Generator
from model.settings import settings_from_env

from scripts.benchmark import quiet, reference_files, request_for

weights = Path(sys.argv[1])
g = Generator(replace(settings_from_env(), weights_dir=weights))
vae = g.pipe.vae
lat = torch.randn(1, 4, 135, 180, device="cuda", dtype=vae.dtype)


def decode_ms(n=10):
    with torch.no_grad():
        vae.decode(lat)
        torch.cuda.synchronize()
        ts = []
        for _ in range(n):
            a, b = torch.cuda.Event(True), torch.cuda.Event(True)
            a.record()
            vae.decode(lat)
            b.record()
            torch.cuda.synchronize()
            ts.append(a.elapsed_time(b))
    return round(statistics.median(ts), 2)


rows = {}
for bench in (False, True):
    torch.backends.cudnn.benchmark = bench
    for cl in (False, True):
        vae.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        rows[f"vae_decode_ms bench={bench} channels_last={cl}"] = [decode_ms(), decode_ms()]
vae.to(memory_format=torch.contiguous_format)
req = request_for(("1080p", "4:3"), reference_files(Path(tempfile.mkdtemp())))


def whole():
    torch.cuda.synchronize()
    t = time.perf_counter()
    with quiet():
        g.predict(req)
    torch.cuda.synchronize()
    return time.perf_counter() - t


res = {False: [], True: []}
for bench in (False, True):
    torch.backends.cudnn.benchmark = bench
    whole()
for _ in range(6):
    for bench in (False, True):
        torch.backends.cudnn.benchmark = bench
        res[bench].append(round(whole(), 4))
        rows.setdefault(f"stages bench={bench}", g.last_timings)
for k, v in rows.items():
    print(k, v)
for bench in (False, True):
    print(
        "prediction 1080p 4:3 3 refs, cudnn.benchmark",
        bench,
        sorted(res[bench]),
        "median",
        round(statistics.median(res[bench]), 4),
    )
