"""The engine's named choices, as text, for the settings to check against. Pure: no torch."""

from enum import StrEnum

# The dtypes the model runs in, by torch's names (model/engine/pipeline.py maps them to torch's).
DTYPE_NAMES = ("float16", "bfloat16", "float32")


class VaeTiling(StrEnum):
    """How the VAE decodes: whole, falling back to tiles on out-of-memory (AUTO); always in
    tiles; never in tiles."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"
