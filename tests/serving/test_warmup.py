"""The idle warm-up (model/serving/warmup.py): what it generates, that it leaves a request of its shapes no
graph to capture, that a prediction stops it and it goes on after, and the real server with it.

Graphs are captured with `rerun`, the CPU stand-in of tests/engine/test_graphs.py: each key's capture and
replay happen as on a GPU, so the captures counted here are those a GPU would make.
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from harness.server import CogServer
from model.contract.prompt import parse_prompt
from model.contract.request import Request
from model.contract.tables import MAX_REFERENCES
from model.engine.graphs import UNetGraphs, graph_key, install_unet_graphs, rerun
from model.engine.placement.binding import Binding, RegionConfig, bind_references
from model.engine.placement.state import RegionState
from model.engine.plan import plan_for
from model.serving.queue import PredictionQueue
from model.serving.service import ImageService
from model.serving.settings import Settings
from model.serving.setup import build_service
from model.serving.warmup import IdleWarmup, WarmupJob, warmup_jobs, warmup_steps
from tests.conftest import OFFLINE_ENV, png_bytes
from tests.engine.test_graphs import digest
from tests.serving.test_queue import SteppingGenerator

STEPS = 6  # a request's base steps here; the warm-up runs warmup_steps(6) = 5
ENTRY = ("1080p", "1:1")  # the cheapest entry with a refine pass (1024x1024 refined to 1080x1080)


# (references, subjects, places): the rest of the references are not mentioned (global).
LAYOUTS = [
    *[(0, 0, 0), (1, 1, 0), (2, 2, 0), (3, 3, 0)],  # all mentioned (a place records its map as a subject does)
    *[(1, 0, 0), (2, 0, 0), (3, 0, 0)],  # none mentioned
    *[(2, 1, 0), (3, 2, 0), (3, 1, 0)],  # subjects and global references
]


def test_jobs_cover_each_plan_once_with_every_layout_of_tagged_references() -> None:
    jobs = warmup_jobs([("1080p", "16:9"), ("720p", "16:9"), ("1080p", "16:9")])
    assert [(job.plan.target, job.references, job.subjects, job.places) for job in jobs] == [
        (size, *layout) for size in ((1920, 1080), (1280, 720)) for layout in LAYOUTS
    ]


@pytest.mark.parametrize(("references", "subjects", "places"), [*LAYOUTS, (2, 1, 1), (3, 1, 2)])
def test_each_warm_up_reference_binds_as_its_layout_says(references: int, subjects: int, places: int) -> None:
    job = WarmupJob(plan_for(*ENTRY), references, subjects, places)
    prompt = parse_prompt(job.prompt)
    assert list(prompt.mentioned_tags()) == job.tags[: subjects + places]
    positions = {tag: (k + 1,) for k, tag in enumerate(prompt.mentioned_tags())}
    kinds = [b.kind for b in bind_references(job.tags, prompt, positions)]
    assert kinds == ["subject"] * subjects + ["place"] * places + ["global"] * (references - subjects - places)


@pytest.mark.parametrize(("references", "subjects", "places"), [(1, 2, 0), (2, 1, 2), (1, -1, 1)])
def test_a_layout_of_more_mentions_than_references_is_refused(references: int, subjects: int, places: int) -> None:
    with pytest.raises(ValueError, match=f"{subjects} subjects and {places} places among {references} references"):
        WarmupJob(plan_for(*ENTRY), references, subjects, places)


def region(kinds: list[str]) -> RegionState:
    bindings = [Binding(k, f"tag{k}", kind, (k + 1,)) for k, kind in enumerate(kinds)]
    return RegionState(bindings=bindings, config=RegionConfig(), steps=30, latent_hw=(8, 8))


def test_a_graph_tells_whether_a_reference_is_global_not_which_nor_places_from_subjects() -> None:
    """The number of subjects is in the tag-token matrix's shape, among the inputs' shapes; which
    references are global, in the "on" input while tagged ones are off, in the weights after."""
    inputs = {"sample": torch.zeros(2, 4, 8, 8)}

    def key(kinds: list[str], tagged_off: bool = True) -> tuple:
        state = region(kinds)
        if not tagged_off:
            state.weights, state.step = torch.ones(len(kinds), 8, 8), state.warmup_steps
        assert state.tagged_off == tagged_off
        return graph_key(inputs, True, state, 0.6)

    assert key(["place", "subject", "subject"]) == key(["subject", "subject", "place"])
    assert key(["global", "subject", "subject"]) == key(["subject", "global", "place"])
    assert key(["place", "subject", "subject"]) != key(["global", "subject", "subject"])
    # Once they are on, every reference's weight is an input: global or not, one graph.
    assert key(["place", "subject", "subject"], False) == key(["subject", "global", "subject"], False)


def phases(steps: int) -> set[tuple[bool, bool]]:
    """The (anchors record, tagged references off) phases a base pass of `steps` steps meets."""
    region = RegionState(
        bindings=[Binding(0, "woman", "subject", (1,))], config=RegionConfig(), steps=steps, latent_hw=(8, 8)
    )
    met = set()
    for step in range(steps):
        region.step = step
        met.add((region.records, step < region.warmup_steps))
    return met


def test_warm_up_steps_meet_every_phase_a_request_meets() -> None:
    fraction = RegionConfig().warmup_fraction
    assert warmup_steps(30, fraction) == 5
    assert warmup_steps(4, fraction) == 4  # turbo: what its 4 steps meet, no fewer
    assert phases(5) == {(False, True), (True, True), (True, False)}
    for steps in range(1, 41):
        assert phases(warmup_steps(steps, fraction)) == phases(steps), steps


def request(folder: Path, prompt: str, tags: list[str], images: int, seed: int) -> Request:
    """A request of `images` references, the first len(tags) of them tagged."""
    refs = []
    for colour in ("green", "pink", "navy")[:images]:
        path = folder / f"{colour}.png"
        path.write_bytes(png_bytes((128, 96), colour))
        refs.append(path)
    return Request(prompt, *ENTRY, reference_tags=tags, reference_images=refs, seed=seed)


REQUESTS = [  # (prompt, tags, images)
    ("a lighthouse in a storm", [], 0),
    ("@woman reading a book", ["woman"], 1),
    ("@woman and @man with @dog at dusk", ["woman", "man", "dog"], 3),
    # The seed's layout: the place's reference first, the subjects after it.
    ("a close up portrait of @woman and @man standing in @park", ["park", "woman", "man"], 3),
    # Global references: untagged, tagged and not mentioned, and a place with no subject.
    ("a lighthouse in a storm", [], 2),
    ("a lighthouse in a storm", ["woman", "man", "dog"], 3),
    ("a lighthouse in @park", ["park"], 1),
    # Subjects and global references, the global ones first or between (the warm-up's are last).
    ("@man at dusk", ["woman", "man"], 2),
    ("@dog chasing @man", ["woman", "man", "dog"], 3),
    ("a portrait of @woman in @park", ["park", "dog", "woman"], 3),
    ("@woman reading a book", ["woman"], 3),  # two untagged
]


@pytest.fixture(scope="module")
def warmed(tiny_weights: Path, small: None) -> tuple[ImageService, UNetGraphs, int]:
    """A service whose idle warm-up was stopped once by a 'prediction', then ran to its end; at
    small sizes (`small`): the warm-up does not depend on the size."""
    service = build_service(Settings(weights_dir=tiny_weights, steps=STEPS, device="cpu", warmup="1080p 1:1"))
    graphs = install_unet_graphs(service.pipe.unet, capture=rerun)
    jobs = service.idle_warmup
    calls = 0

    def stop_at_the_third_step() -> bool:
        nonlocal calls
        calls += 1
        return calls == 3

    done = service.warm_up(jobs, service.idle_warmup_steps, stop_at_the_third_step)
    assert done == 0 and calls == 3, "the stop is checked after every step and honoured at once"
    assert service.warm_up(jobs, service.idle_warmup_steps, lambda: False) == len(jobs)
    return service, graphs, graphs.captures


def test_warm_up_captures_each_graph_of_its_entry(warmed: tuple[ImageService, UNetGraphs, int]) -> None:
    service, _, captures = warmed
    assert service.idle_warmup_steps == 5
    # 0 references: base and refine. n mentioned references (subjects or places alike: each
    # records its map): the tag warm-up's step, the recording step, the localized ones and the
    # refine. n global references: base and refine (nothing is recorded or localized). n with 1 to
    # n-1 mentioned and the rest global: per number of mentioned ones, the recording step with the
    # global ones on and the localized ones (the warm-up's step and the refine replay the graphs
    # of the layouts above).
    assert captures == 2 + sum(4 + 2 + 2 * (n - 1) for n in range(1, MAX_REFERENCES + 1))


def test_requests_of_the_warmed_shapes_capture_nothing_and_make_the_eager_image(
    warmed: tuple[ImageService, UNetGraphs, int], tiny_weights: Path, tmp_path: Path
) -> None:
    """Replayed from graphs that the warm-up captured with other tokens, images and seed, and,
    for the seed's layout, with the place last instead of first."""
    service, graphs, captures = warmed
    eager = build_service(Settings(weights_dir=tiny_weights, steps=STEPS, device="cpu"))
    for k, (prompt, tags, images) in enumerate(REQUESTS):
        (tmp_path / str(k)).mkdir()
        inputs = request(tmp_path / str(k), prompt, tags, images, seed=11)
        assert digest(service.predict(inputs)) == digest(eager.predict(inputs)), prompt
        assert graphs.captures == captures, f"{prompt!r} captured a graph the warm-up should have"


def test_a_warm_up_failure_is_reported_and_never_raised() -> None:
    reports: list[str] = []

    def broken(job: WarmupJob, stop: object) -> bool:
        raise RuntimeError("CUDA error: out of memory")

    with ThreadPoolExecutor(1) as gpu:
        warmup = IdleWarmup(warmup_jobs([ENTRY]), broken, gpu, busy=lambda: False, report=reports.append)
        warmup.poke()
    assert warmup.left == [] and len(reports) == 1 and reports[0].startswith("Warm-up failed")


class WarmingGenerator(SteppingGenerator):
    """The queue's stand-in service, with an idle warm-up of `jobs` jobs of 10 steps each."""

    def __init__(self, jobs: int = 3) -> None:
        super().__init__(steps=4, step_s=0.05)
        self.idle_warmup = warmup_jobs([ENTRY])[:jobs]
        self.idle_warmup_steps = 10

    def warm_up(self, jobs: list[WarmupJob], steps: int, should_stop) -> int:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            for done, job in enumerate(jobs):
                self.events.append(("warm", str(job.references)))
                for _ in range(steps):
                    time.sleep(self.step_s)
                    if should_stop():
                        self.events.append(("warm stopped", str(job.references)))
                        return done
                self.events.append(("warmed", str(job.references)))
            return len(jobs)
        finally:
            with self.lock:
                self.running -= 1


def test_a_prediction_stops_the_warm_up_at_its_next_step_and_it_goes_on_after(capsys: pytest.CaptureFixture) -> None:
    service = WarmingGenerator(jobs=3)
    queue = PredictionQueue(service)  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while ("warm", "1") not in service.events and time.monotonic() < deadline:
        time.sleep(0.01)  # until the warm-up is into its second job

    async def one() -> Path:
        return await queue.predict(Request(prompt="p", resolution="720p", aspect_ratio="1:1"))

    assert asyncio.run(one()) == Path("/out/p.png")
    deadline = time.monotonic() + 5
    while queue.warmup.left and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queue.warmup.left == []
    assert service.max_running == 1, "a warm-up step and a prediction ran at once"
    assert service.events == [
        ("warm", "0"), ("warmed", "0"), ("warm", "1"), ("warm stopped", "1"),
        ("start", "p"), ("end", "p"),
        ("warm", "1"), ("warmed", "1"), ("warm", "2"), ("warmed", "2"),
    ]  # fmt: skip
    out = capsys.readouterr().out
    width, height = service.idle_warmup[0].plan.target
    assert f"Warming up {width}x{height} with 0 to 2 references while idle" in out
    assert "Warm-up paused for a prediction: 2 of 3 generations left" in out
    assert re.search(r"Warm-up done: 3 generations in \d+\.\dsec", out)


def test_no_warm_up_without_cuda_graphs_unless_asked(tiny_weights: Path) -> None:
    assert Settings(warmup="auto").warmup_entries(graphs=True) == [("1080p", "16:9")]
    assert Settings(warmup="auto").warmup_entries(graphs=False) == []
    assert Settings(warmup="none").warmup_entries(graphs=True) == []
    assert build_service(Settings(weights_dir=tiny_weights, device="cpu")).idle_warmup == []


def test_the_server_warms_up_while_idle_and_serves_a_prediction_at_once(tiny_weights: Path, tmp_path: Path) -> None:
    """The real server: a prediction sent the moment it is READY stops the warm-up, succeeds, and
    the warm-up then ends; its lines are in the server's log, none in the prediction's."""
    env = {
        "GEN4_STEPS": "2",
        "GEN4_WARMUP": "720p 1:1",
        "GEN4_QUEUE_STATE_FILE": str(tmp_path / "queue.json"),
        **OFFLINE_ENV,
    }
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = CogServer(tiny_weights, log=log, extra_env=env)
        try:
            server.wait_ready(timeout=300)
            body = server.predict({"prompt": "a cat", "resolution": "720p", "aspect_ratio": "1:1", "seed": 3}).json()
            assert body["status"] == "succeeded", body
            assert "arm-up" not in body["logs"]
            deadline = time.monotonic() + 240
            while "Warm-up done" not in log_path.read_text() and time.monotonic() < deadline:
                time.sleep(0.5)
            again = server.predict({"prompt": "a cat", "resolution": "720p", "aspect_ratio": "1:1", "seed": 3}).json()
        finally:
            server.stop()
    text = log_path.read_text()
    assert "Warming up 720x720 with 0 to 3 references while idle" in text
    jobs = len(warmup_jobs([("720p", "1:1")]))
    assert re.search(rf"Warm-up paused for a prediction: \d+ of {jobs} generations left", text)
    assert re.search(rf"Warm-up done: {jobs} generations in \d+\.\dsec", text)
    assert again["status"] == "succeeded" and again["output"] == body["output"], "the warm-up changed an output"
