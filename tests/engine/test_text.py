"""The prompt's text embeddings: one window exactly as diffusers encodes it, longer prompts in
windows of 77 (model/engine/text.py), on the real diffusers pipeline with tiny weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from model.engine.pipeline import load_pipeline, pick_runtime
from model.engine.text import TextEncoder


@pytest.fixture(scope="module")
def pipe(tiny_weights: Path) -> StableDiffusionXLPipeline:
    return load_pipeline(tiny_weights, pick_runtime("cpu", "float32"))


def diffusers_embeds(pipe: StableDiffusionXLPipeline, prompt: str) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        return pipe.encode_prompt(prompt, device=pipe.device, do_classifier_free_guidance=True)


@pytest.mark.parametrize("prompt", ["a heron at first light", "woman and man in park, " * 10])
def test_a_prompt_of_one_window_equals_diffusers_encode_prompt(pipe: StableDiffusionXLPipeline, prompt: str) -> None:
    ours = TextEncoder(pipe).encode(prompt)
    expected = diffusers_embeds(pipe, prompt)
    assert ours.prompt_embeds.shape == (1, 77, 64)
    for got, want in zip(ours.as_kwargs().values(), expected, strict=True):
        assert torch.equal(got, want)


def test_a_long_prompt_is_read_whole_in_windows(pipe: StableDiffusionXLPipeline) -> None:
    head = "a woman in a pink sweater and " * 12  # 84 tokens, no phrase break: windows of 75 and 9
    encoder = TextEncoder(pipe)
    rainy, sunny = encoder.encode(head + "under rain"), encoder.encode(head + "under sun")
    assert rainy.prompt_embeds.shape == (1, 154, 64) and torch.all(rainy.negative_prompt_embeds == 0)
    # The first window is what diffusers reads (it cuts the prompt at 77 tokens) ...
    truncated = diffusers_embeds(pipe, head + "under rain")
    assert torch.allclose(rainy.prompt_embeds[:, :77], truncated[0], atol=1e-5)
    assert torch.allclose(rainy.pooled_prompt_embeds, truncated[2], atol=1e-5)
    # ... and the tail, which diffusers drops, is read: the last words change only the second window.
    assert torch.equal(rainy.prompt_embeds[:, :77], sunny.prompt_embeds[:, :77])
    assert not torch.allclose(rainy.prompt_embeds[:, 77:], sunny.prompt_embeds[:, 77:])
    assert encoder.encode("word " * 400).prompt_embeds.shape == (1, 4 * 77, 64)  # at most 4 windows


def test_without_zeros_for_empty_prompt_the_negative_is_the_empty_prompt_per_window(tiny_weights: Path) -> None:
    pipe = load_pipeline(tiny_weights, pick_runtime("cpu", "float32"))
    pipe.register_to_config(force_zeros_for_empty_prompt=False)
    short = TextEncoder(pipe).encode("a heron")
    expected = diffusers_embeds(pipe, "a heron")
    assert torch.equal(short.negative_prompt_embeds, expected[1])
    assert torch.equal(short.negative_pooled_prompt_embeds, expected[3])
    long = TextEncoder(pipe).encode("word " * 100)
    assert torch.equal(long.negative_prompt_embeds, expected[1].repeat(1, 2, 1))
