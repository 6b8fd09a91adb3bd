"""Stage 4 of a prediction (model/serving/service.py): the prompt's SDXL text embeddings (both
encoders), cached by prompt text.

Encoded once per request and shared by the base and refine passes; a repeated prompt skips both
text encoders. A prompt longer than one 77-token window is read in several (model/engine/tokens.py): the
windows go through each encoder as one batch and their hidden states are concatenated along the
sequence; the pooled embedding is the first window's, which holds the start of the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import StableDiffusionXLPipeline

from model.contract.cache import LRUCache
from model.engine.tokens import Layout, layout


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
    def encode(self, prompt: str, read: Layout | None = None) -> TextEmbeds:
        """Embeddings of `prompt` (negative: SDXL's zeros for an empty prompt), cached. `read` is
        the prompt's layout when the caller has it (model/engine/tokens.py: PromptTokens)."""
        cached = self.cache.get(prompt)
        if cached is not None:
            return cached
        self.encoder_calls += 1
        embeds, pooled = self._windows(prompt, read)
        # Always with the negative half: guidance is a server setting, and zeros cost nothing.
        if self.pipe.config.force_zeros_for_empty_prompt:  # SDXL base: zeros for no negative prompt
            negative, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        else:  # the empty prompt's window, once per window of the prompt (the shapes must match)
            negative, negative_pooled = self._windows("")
            negative = negative.repeat(1, embeds.shape[1] // negative.shape[1], 1)
        result = TextEmbeds(embeds, negative, pooled, negative_pooled)
        self.cache.put(prompt, result)
        return result

    def _windows(self, text: str, read: Layout | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, 77 x windows, 2048] penultimate hidden states of both encoders side by side, and the
        [1, 1280] pooled projection of the second encoder's first window; as diffusers'
        encode_prompt computes them for a prompt of one window."""
        pipe = self.pipe
        read = read or layout(pipe.tokenizer, text)  # one layout for both tokenizers (PromptTokens)
        hidden, pooled = [], None
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            ids = torch.tensor(read.rows(tokenizer), device=pipe.device)  # [windows, 77]
            out = encoder(ids, output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # the encoder with a projection: its text_embeds
                pooled = out[0][:1]
            states = out.hidden_states[-2]
            hidden.append(states.reshape(1, -1, states.shape[-1]))
        dtype = pipe.text_encoder_2.dtype
        return torch.cat(hidden, dim=-1).to(dtype), pooled.to(dtype)
