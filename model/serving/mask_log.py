"""Tag masks in the prediction's logs (GEN4_MASKS_IN_LOGS), for clients on another machine.

The interface's one output is the image, and GEN4_MASKS_DIR writes the masks where only the
server's machine sees them. With this opt-in setting, each prediction logs one more line: the
masks at the resolution they are computed (32x32 at 1 MP, a few hundred bytes), as a PNG data
URI whose red, green and blue channels are the masks of references 1, 2 and 3, in request order.
A client (scripts/playground.py) reads it back with `read_masks_line` and draws it over the
image. Pure: numpy and PIL, no torch.
"""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

from model.contract.tables import MAX_REFERENCES

PREFIX = "Tag masks (red, green, blue: references 1, 2, 3): "
_LINE_RE = re.compile(re.escape(PREFIX) + r"data:image/png;base64,([A-Za-z0-9+/=]+)$", re.M)


def masks_line(masks: np.ndarray) -> str:
    """The log line for [n, h, w] masks in 0..1, one per reference (n <= 3)."""
    if masks.ndim != 3 or not 1 <= masks.shape[0] <= MAX_REFERENCES:
        raise ValueError(f"expected [1..{MAX_REFERENCES}, h, w] masks, got shape {masks.shape}")
    rgb = np.zeros((*masks.shape[1:], 3), dtype=np.uint8)
    rgb[..., : masks.shape[0]] = (np.clip(masks, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "PNG")
    return PREFIX + "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def read_masks_line(logs: str, references: int) -> np.ndarray | None:
    """The [references, h, w] masks (0..1) from a prediction's logs, or None if it logged none."""
    found = _LINE_RE.findall(logs)
    if not found:
        return None
    with Image.open(io.BytesIO(base64.b64decode(found[-1]))) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    return rgb.transpose(2, 0, 1)[:references]
