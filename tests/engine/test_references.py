"""The references on their way to the UNet (model/engine/references.py and the decoded-image cache):
decoded at the size the image encoder needs, encoded once, the same whatever else was cached."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from model.contract import images
from model.contract.request import Request
from model.contract.tables import REFERENCE_DECODE_SIDE
from model.engine.references import ReferenceEncoder
from model.serving.service import ImageService
from tests.engine.conftest import reference


def test_references_are_decoded_at_three_times_what_the_image_encoder_reads(service: ImageService) -> None:
    """model/contract/images.py reduces references to REFERENCE_DECODE_SIDE: 3x the loaded encoder's input,
    as its preprocessor resizes and crops. That is diffusers' IP-Adapter preprocessing, on the PIL
    backend that the project's image (no torchvision) has, whatever this machine has installed."""
    processor = service.pipe.feature_extractor
    assert type(processor) is CLIPImageProcessorPil
    side = max(processor.size["shortest_edge"], processor.crop_size["height"], processor.crop_size["width"])
    assert side == service.pipe.image_encoder.config.image_size == 224
    assert 3 * side == REFERENCE_DECODE_SIDE


def test_repeated_reference_skips_the_image_encoder(
    service: ImageService, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    refs = [reference(tmp_path, "navy"), reference(tmp_path, "olive")]
    request = Request(
        prompt="@man", resolution="720p", aspect_ratio="1:1", reference_tags=["man"], reference_images=refs, seed=3
    )
    service.predict(request)
    calls = service.encoder.encoder_calls
    assert "0 cached, 2 encoded" in capsys.readouterr().out
    # The same pixels from another file are the same reference.
    copy = tmp_path / "copy.png"
    copy.write_bytes(refs[0].read_bytes())
    service.predict(Request(**{**request.__dict__, "reference_images": [copy, refs[1]]}))
    assert service.encoder.encoder_calls == calls
    assert "2 cached, 0 encoded" in capsys.readouterr().out


def test_a_reference_encodes_the_same_whichever_others_were_cached(service: ImageService) -> None:
    """A seed makes the same image whatever the cache held: a reference's features do not depend
    on which other references of its request were new (batched, they differed in the last bits)."""
    images = [Image.new("RGB", (128, 96), colour) for colour in ("green", "pink", "navy")]
    pipe = service.pipe
    fresh, used = (ReferenceEncoder(pipe.image_encoder, pipe.feature_extractor, "tiny", capacity=8) for _ in "ab")
    alone = [fresh.encode([image]).positive[0] for image in images]
    used.encode(images[:1])
    partly_cached = used.encode(images)
    assert (partly_cached.hits, partly_cached.misses) == (1, 2)
    assert all(torch.equal(a, b) for a, b in zip(alone, partly_cached.positive, strict=True))


def test_a_reference_file_sent_again_is_not_decoded_again(
    service: ImageService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cog downloads every request's references to new files; the same bytes are decoded once,
    and the image is the one decoding them again would give."""
    decoded: list[Path] = []
    real = images.decode_reference

    def decode(path: Path, *args: object) -> Image.Image:
        decoded.append(path)
        return real(path, *args)

    monkeypatch.setattr(images, "decode_reference", decode)
    first = reference(tmp_path, "teal", (320, 240))
    again = tmp_path / "again.png"
    again.write_bytes(first.read_bytes())
    request = Request(
        prompt="@cat", resolution="720p", aspect_ratio="1:1", reference_tags=["cat"], reference_images=[first], seed=5
    )
    outputs = [service.predict(request), service.predict(replace(request, reference_images=[again]))]
    assert decoded == [first]
    assert service.decoded is not None and service.decoded.weight >= 320 * 240 * 3
    assert np.array_equal(*(np.asarray(Image.open(path)) for path in outputs))
