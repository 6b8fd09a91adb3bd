"""The real diffusers pipeline on tiny weights, in process: sizes, determinism, cache, errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from model.pipeline import MissingWeightsError, check_weights
from model.request import Request
from model.service import Generator
from model.settings import Settings
from model.tables import OUTPUT_SIZES
from tests.conftest import png_bytes


@pytest.fixture(scope="module")
def generator(tiny_weights: Path) -> Generator:
    return Generator(Settings(weights_dir=tiny_weights, steps=1, device="cpu"))


def reference(tmp_path: Path, color: str, size: tuple[int, int] = (256, 256)) -> Path:
    path = tmp_path / f"{color}.png"
    path.write_bytes(png_bytes(size, color))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("resolution", "aspect_ratio"), [(r, a) for r, table in OUTPUT_SIZES.items() for a in table])
def test_every_table_entry_has_its_exact_size(generator: Generator, resolution: str, aspect_ratio: str) -> None:
    out = generator.predict(Request(prompt="a lighthouse", resolution=resolution, aspect_ratio=aspect_ratio, seed=1))
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == OUTPUT_SIZES[resolution][aspect_ratio]


def test_same_seed_same_bytes_other_seed_other_image(generator: Generator, tmp_path: Path) -> None:
    refs = [reference(tmp_path, "green"), reference(tmp_path, "pink", (200, 300))]
    request = Request(
        prompt="@woman in @park",
        resolution="720p",
        aspect_ratio="1:1",
        reference_tags=["park", "woman"],
        reference_images=refs,
        seed=1020561550,
    )
    first = digest(generator.predict(request))
    assert digest(generator.predict(request)) == first
    other = Request(**{**request.__dict__, "seed": 1020561551})
    assert digest(generator.predict(other)) != first


def test_repeated_reference_skips_the_image_encoder(
    generator: Generator, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    refs = [reference(tmp_path, "navy"), reference(tmp_path, "olive")]
    request = Request(
        prompt="@man", resolution="720p", aspect_ratio="1:1", reference_tags=["man"], reference_images=refs, seed=3
    )
    generator.predict(request)
    calls = generator.encoder.encoder_calls
    assert "0 cached, 2 encoded" in capsys.readouterr().out
    # The same pixels from another file are the same reference.
    copy = tmp_path / "copy.png"
    copy.write_bytes(refs[0].read_bytes())
    generator.predict(Request(**{**request.__dict__, "reference_images": [copy, refs[1]]}))
    assert generator.encoder.encoder_calls == calls
    assert "2 cached, 0 encoded" in capsys.readouterr().out


def test_replicate_log_lines(generator: Generator, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    refs = [reference(tmp_path, c) for c in ("green", "pink", "blue")]
    generator.predict(
        Request(
            prompt="a close up portrait of @woman and @man standing in @park",
            resolution="1080p",
            aspect_ratio="4:3",
            reference_tags=["park", "woman", "man"],
            reference_images=refs,
            seed=1020561550,
        )
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "Using seed: 1020561550",
        "Using reference tags: park, woman, man",
        "Generating image with ratio 1440:1080 (4:3 at 1080p resolution)",
    ]
    assert "Generating..." in lines and "0%" in lines and "100%" in lines
    assert lines[-1].startswith("Generated image in ") and lines[-1].endswith("sec")


def test_random_seed_is_drawn_and_logged(generator: Generator, capsys: pytest.CaptureFixture) -> None:
    generator.predict(Request(prompt="a fox", resolution="720p", aspect_ratio="1:1"))
    seed_line = capsys.readouterr().out.splitlines()[0]
    assert seed_line.startswith("Using seed: ") and 0 <= int(seed_line.split(": ")[1]) <= 4294967295


def test_missing_weights_name_the_download_script(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match=r"scripts/download_weights\.py"):
        check_weights(tmp_path)
