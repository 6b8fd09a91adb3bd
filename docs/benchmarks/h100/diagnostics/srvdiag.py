"""Device scratch: where does the server's extra time go? In-process direct vs via GenerationQueue
(thread + asyncio), vs the real server (with and without MALLOC_ARENA_MAX=2), 1080p 4:3, 3 refs."""

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))
from dataclasses import replace

import torch
from model.queue import GenerationQueue
from model.service import Generator
from model.settings import settings_from_env

from scripts.benchmark import quiet, reference_files, request_for, served_inputs
from scripts.serve import CogServer

weights = Path(sys.argv[1])
out = Path(sys.argv[2])
folder = Path(tempfile.mkdtemp())
refs = reference_files(folder)
entry = ("1080p", "4:3")
g = Generator(replace(settings_from_env(), weights_dir=weights))
sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
q = GenerationQueue(g)
req = request_for(entry, refs)


def direct():
    with quiet():
        g.predict(req)


def queued():
    with quiet():
        asyncio.run(q.predict(req))


res = {}


def timed(fn):
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


for fn in (direct, queued):  # warm-up
    fn()
for _ in range(3):
    for name, fn in (("direct", direct), ("queued", queued)):
        res.setdefault(name, []).append(round(timed(fn), 4))
        res.setdefault(name + "_stages", []).append({k: round(v, 4) for k, v in g.last_timings.items()})
inputs = served_inputs(entry, refs)
for label, env in (("server", {}), ("server_arena64", {"MALLOC_ARENA_MAX": "64"})):
    with open(out / f"{label}.log", "w") as log:
        s = CogServer(weights, log=log, extra_env=env)
        try:
            t = time.perf_counter()
            s.wait_ready(timeout=600)
            res[label + "_setup"] = round(time.perf_counter() - t, 2)
            s.predict(inputs)
            for _ in range(3):
                t = time.perf_counter()
                body = s.predict(inputs).json()
                e2e = time.perf_counter() - t
                res.setdefault(label, []).append((round(e2e, 4), round(body["metrics"]["predict_time"], 4)))
                res.setdefault("direct_between_" + label, []).append(round(timed(direct), 4))
        finally:
            s.stop()
for k, v in res.items():
    print(k, v if "stages" not in k else v[-1])
(out / "srvdiag.json").write_text(json.dumps(res, indent=1))
