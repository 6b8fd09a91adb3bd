"""Where each tag's region lies on an output, and how much a region looks like a reference.

A region is a mask the localized run applied (RegionState.final_masks(): anchor resolution, the
last pass's) brought onto the output's pixels as that pass used it. Similarity is the cosine of
CLIP image embeddings (the pipeline's own ViT-H image encoder and its processor, the encoder whose
hidden states IP-Adapter reads) between the reference and a view of the region: the region's
bounding box, padded to a square (the processor would crop a long box to its centre), with every
pixel outside the region set to the processor's mean colour, which normalises to zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

from model.engine.plan import Plan, cover_box

# A region smaller than this share of the image is not scored: its view would be a few pixels
# blown up to the encoder's 224.
MIN_AREA = 0.01


def mask_on_output(mask: np.ndarray, plan: Plan) -> np.ndarray:
    """A [h, w] mask of the last pass (weights in 0..1; the region is where it is 0.5 or more), as a
    bool [height, width] mask on the output's pixels. A refine pass applies the masks stretched to
    its latent (which is the output's); a base pass that is downscaled is brought to the output as
    the image is, by cover and centre crop."""
    image = Image.fromarray((np.clip(mask, 0, 1) * 255).round().astype(np.uint8))
    if plan.refine:
        out = image.resize(plan.target, Image.Resampling.NEAREST)
    else:
        out = image.resize(plan.base, Image.Resampling.NEAREST)
        resized, box = cover_box(plan.base, plan.target)
        out = out.resize(resized, Image.Resampling.NEAREST).crop(box)
    return np.asarray(out) >= 128


def masked_view(image: Image.Image, mask: np.ndarray, fill: tuple[int, int, int]) -> Image.Image | None:
    """The pixels of `image` under `mask` (bool, the image's size), in the mask's bounding box
    padded to a square, every other pixel `fill`; None when the mask covers under MIN_AREA."""
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask {mask.shape} does not match the image's {image.height}x{image.width}")
    if mask.mean() < MIN_AREA:
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    pixels = np.asarray(image.convert("RGB"))[top:bottom, left:right]
    pixels = np.where(mask[top:bottom, left:right, None], pixels, np.asarray(fill, dtype=np.uint8))
    side = max(bottom - top, right - left)
    square = np.empty((side, side, 3), dtype=np.uint8)
    square[...] = fill
    y, x = (side - (bottom - top)) // 2, (side - (right - left)) // 2
    square[y : y + bottom - top, x : x + right - left] = pixels
    return Image.fromarray(square)


class ClipScorer:
    """Unit-length CLIP image embeddings from the pipeline's image encoder."""

    def __init__(
        self, encoder: CLIPVisionModelWithProjection, processor: CLIPImageProcessorPil, batch: int = 16
    ) -> None:
        self.encoder = encoder
        self.processor = processor
        self.batch = batch

    @property
    def fill(self) -> tuple[int, int, int]:
        """The processor's mean colour: what a pixel outside the region becomes (zero once normalised)."""
        return tuple(round(255 * m) for m in self.processor.image_mean)  # type: ignore[return-value]

    @torch.inference_mode()
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """[n, dim] float64, each row of unit length."""
        rows = []
        for start in range(0, len(images), self.batch):
            chunk = list(images[start : start + self.batch])
            pixels = self.processor(images=chunk, return_tensors="pt").pixel_values
            pixels = pixels.to(self.encoder.device, self.encoder.dtype)
            rows.append(self.encoder(pixels).image_embeds.float().cpu().numpy().astype(np.float64))
        if not rows:
            return np.zeros((0, self.encoder.config.projection_dim))
        out = np.concatenate(rows)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def region_similarity(
        self, image: Image.Image, mask: np.ndarray, references: np.ndarray
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Cosine similarity of each reference (rows of `references`, unit length) with the view
        of the image inside `mask` and with the view outside it; None for a side under MIN_AREA."""
        views = [masked_view(image, mask, self.fill), masked_view(image, ~mask, self.fill)]
        present = [v for v in views if v is not None]
        embedded = iter(self.embed(present) @ references.T) if present else iter(())
        inside, outside = (next(embedded) if v is not None else None for v in views)
        return inside, outside
