"""Stage 4a: the prompt's SDXL text embeddings (both encoders), cached by prompt text.

Encoded once per request and shared by the base and refine passes; a repeated prompt skips both
text encoders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import StableDiffusionXLPipeline

from model.cache import LRUCache


@dataclass(frozen=True)
class TextEmbeds:
    """The four tensors SDXL's pipelines take instead of a prompt."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    negative_pooled_prompt_embeds: torch.Tensor

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        return dict(self.__dict__)


class TextEncoder:
    """SDXL's two CLIP text encoders behind a bounded LRU keyed by the prompt text."""

    def __init__(self, pipe: StableDiffusionXLPipeline, capacity: int = 32) -> None:
        self.pipe = pipe
        self.cache: LRUCache[TextEmbeds] = LRUCache(capacity)
        self.encoder_calls = 0  # prompts run through the encoders, for tests and benchmarks

    @torch.inference_mode()
    def encode(self, prompt: str) -> TextEmbeds:
        """Embeddings of `prompt` (negative: SDXL's zeros for an empty prompt), cached."""
        cached = self.cache.get(prompt)
        if cached is not None:
            return cached
        self.encoder_calls += 1
        # Always with the negative half: guidance is a server setting, and zeros cost nothing.
        embeds = TextEmbeds(*self.pipe.encode_prompt(prompt, device=self.pipe.device, do_classifier_free_guidance=True))
        self.cache.put(prompt, embeds)
        return embeds
