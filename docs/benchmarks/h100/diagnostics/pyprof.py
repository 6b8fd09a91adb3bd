"""Device scratch: cProfile of plain vs tag-localized denoising (3 refs, 1152x864, 10 steps)."""

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))
import torch
from model.service import Generator
from model.settings import Settings

from scripts.benchmark import injection_runner

weights = Path(sys.argv[1])
steps = 10
g = Generator(Settings(weights_dir=weights, steps=steps))
run = injection_runner(g, steps, 1152, 864)
for loc in (False, True):
    run(loc)
    torch.cuda.synchronize()
walls = {False: [], True: []}
for _ in range(5):
    for loc in (False, True):
        torch.cuda.synchronize()
        t = time.perf_counter()
        run(loc)
        torch.cuda.synchronize()
        walls[loc].append(time.perf_counter() - t)
for loc in (False, True):
    w = sorted(walls[loc])
    print("wall", "localized" if loc else "plain", [round(x, 4) for x in w], "median", round(w[2], 4))
# GPU-only time per run: events around the whole run
for loc in (False, True):
    pr = cProfile.Profile()
    torch.cuda.synchronize()
    pr.enable()
    run(loc)
    torch.cuda.synchronize()
    pr.disable()
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    st.sort_stats("tottime").print_stats(30)
    print("=== cProfile", "localized" if loc else "plain")
    print(s.getvalue()[:9000])
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    st.sort_stats("cumulative").print_stats(40)
    print("=== cumulative", "localized" if loc else "plain")
    print(s.getvalue()[:9000])
