"""Settings: the README's table is the code's, and bad values name the variable."""

from __future__ import annotations

import re
import tempfile
from dataclasses import fields
from pathlib import Path

import pytest

from model.serving.settings import Settings, env_name, settings_from_env

ROOT = Path(__file__).resolve().parents[2]


def readme_settings() -> dict[str, str]:
    """`variable` -> `default` from the README's settings table."""
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| `([^`]*)`", (ROOT / "README.md").read_text(), flags=re.M)
    return dict(rows)


def test_the_readme_table_lists_every_setting_with_its_default() -> None:
    table = readme_settings()
    for field in fields(Settings):
        name = env_name(field.name)
        assert name in table, f"{name} is missing from the README's settings table"
        default = field.default
        if isinstance(default, bool):
            assert table[name] == str(default).lower(), name
        elif default is None:
            assert table[name] == "none", name
        elif name == "GEN4_QUEUE_STATE_FILE":
            assert Path(default) == Path(tempfile.gettempdir()) / Path(table[name]).name
        else:
            assert table[name] == str(default), name


def test_every_setting_is_read_from_its_variable() -> None:
    settings = settings_from_env({"GEN4_COMPILE": "1", "GEN4_DTYPE": "bfloat16", "GEN4_STEPS": "12"})
    assert settings.compile is True and settings.dtype == "bfloat16" and settings.steps == 12


def test_a_masks_folder_turns_the_masks_on() -> None:
    assert not settings_from_env({}).writes_masks
    assert settings_from_env({"GEN4_SAVE_MASKS": "1"}).writes_masks
    settings = settings_from_env({"GEN4_MASKS_DIR": "/masks"})
    assert settings.masks_dir == Path("/masks") and settings.writes_masks and not settings.save_masks


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GEN4_DTYPE", "float8"),
        ("GEN4_COMPILE", "maybe"),
        ("GEN4_STEPS", "0"),
        ("GEN4_VAE_TILING", "sometimes"),
        ("GEN4_DECODED_CACHE_MB", "-1"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_value(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable) as caught:
        settings_from_env({variable: value})
    assert value in str(caught.value)
