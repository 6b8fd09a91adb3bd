"""Stage 3 of a prediction (model/serving/service.py): encode reference images for IP-Adapter
Plus, with a bounded LRU cache.

A repeated reference (same decoded pixels, same encoder) never runs the image encoder again; the
negative (unconditional) embedding is computed once per encoder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

from model.contract.cache import LRUCache


@dataclass(frozen=True)
class Encoded:
    """Penultimate-layer CLIP features for each reference, and the cache's tally."""

    positive: torch.Tensor  # [n, tokens, dim]
    unconditional: torch.Tensor  # [tokens, dim]: features of an all-zero image
    hits: int
    misses: int

    def ip_adapter_embeds(self, guidance: bool) -> torch.Tensor:
        """diffusers' `ip_adapter_image_embeds` entry: [2 (neg, pos) or 1, n, tokens, dim].

        With no reference, the unconditional features stand in for one image, because the
        adapter needs an input of the right shape even when its scale is 0.
        """
        positive = self.positive if self.positive.shape[0] else self.unconditional[None]
        if guidance:
            return torch.stack([self.unconditional.expand_as(positive), positive])
        return positive[None]


def pixel_key(image: Image.Image) -> str:
    """Hash of the decoded pixels (not of the file: a re-encoded copy is the same reference)."""
    digest = hashlib.sha256()
    digest.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class ReferenceEncoder:
    """CLIP ViT-H features as IP-Adapter Plus wants them (hidden_states[-2]), cached."""

    def __init__(
        self,
        image_encoder: CLIPVisionModelWithProjection,
        feature_extractor: CLIPImageProcessorPil,
        identity: str,
        capacity: int,
    ) -> None:
        self.image_encoder = image_encoder
        self.feature_extractor = feature_extractor
        # Part of every cache key: features from another encoder are never reused.
        self.identity = identity
        self.cache: LRUCache[torch.Tensor] = LRUCache(capacity)
        self._negative: torch.Tensor | None = None
        self.encoder_calls = 0  # images run through the encoder, for tests and benchmarks

    @property
    def device(self) -> torch.device:
        return self.image_encoder.device

    @torch.inference_mode()
    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        self.encoder_calls += pixels.shape[0]
        out = self.image_encoder(pixels, output_hidden_states=True)
        return out.hidden_states[-2]

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        values = self.feature_extractor(images=list(images), return_tensors="pt").pixel_values
        return values.to(self.device, self.image_encoder.dtype)

    def negative(self) -> torch.Tensor:
        """Features of an all-zero image (IP-Adapter's unconditional input), computed once."""
        if self._negative is None:
            size = self.feature_extractor.crop_size
            zeros = torch.zeros(1, 3, size["height"], size["width"], device=self.device, dtype=self.image_encoder.dtype)
            self._negative = self._features(zeros)[0]
        return self._negative

    def encode(self, images: Sequence[Image.Image]) -> Encoded:
        """Features for each image, from the cache where possible; each miss runs on its own."""
        keys = [f"{self.identity}:{pixel_key(im)}" for im in images]
        # Read the hits before inserting anything: inserting may evict them from a small cache.
        known = {k: v for k in dict.fromkeys(keys) if (v := self.cache.get(k)) is not None}
        missing = [k for k in dict.fromkeys(keys) if k not in known]
        for key in missing:
            # One image per call, never a batch of the misses: an image's features would then
            # depend on which other references were new (a batch of 2 and one of 3 differ in the
            # last bits, here and in cuBLAS), and so would the image a seed makes.
            known[key] = self._features(self._pixels([images[keys.index(key)]]))[0]
            self.cache.put(key, known[key])
        hits = sum(1 for k in keys if k not in missing)
        negative = self.negative()
        found = [known[k] for k in keys]
        positive = torch.stack(found) if found else negative.new_zeros((0, *negative.shape))
        return Encoded(positive=positive, unconditional=negative, hits=hits, misses=len(keys) - hits)
