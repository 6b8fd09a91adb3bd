"""The interface contract: schema file, Input fields vs Replicate's, ratio table, cog.yaml."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from model.contract.tables import OUTPUT_SIZES
from model.serving.settings import Settings, settings_from_env
from tests.conftest import ROOT, SHARED

REFERENCE = SHARED / "api" / "replicate-gen4-image.input.json"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared folder at {SHARED}")


def committed_schema() -> dict:
    return json.loads((ROOT / ".cog" / "openapi_schema.json").read_text())


def test_committed_schema_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_openapi_schema.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def resolved_input() -> dict[str, dict]:
    """Input properties with allOf enum references inlined, as a client sees them."""
    schemas = committed_schema()["components"]["schemas"]
    props = {}
    for name, prop in schemas["Input"]["properties"].items():
        prop = dict(prop)
        for ref in prop.pop("allOf", []):
            enum = schemas[ref["$ref"].rsplit("/", 1)[1]]
            prop |= {"enum": enum["enum"], "type": enum["type"]}
        props[name] = prop
    return props


@needs_shared
def test_input_matches_replicate_field_by_field() -> None:
    reference = json.loads(REFERENCE.read_text())
    ours = resolved_input()
    assert list(ours) == sorted(reference["properties"], key=lambda n: reference["properties"][n]["x-order"])
    assert committed_schema()["components"]["schemas"]["Input"]["required"] == reference["required"]
    for name, ref in reference["properties"].items():
        for key in ("type", "description", "default", "enum", "x-order", "items"):
            assert ours[name].get(key) == ref.get(key), f"{name}.{key}"
        # Titles: cog titles plain fields itself; enum fields carry theirs on the enum component.
        if "title" in ours[name]:
            assert ours[name]["title"] == ref["title"], name
        # The only key cog adds beyond the reference: `nullable` on the optional seed.
        assert set(ours[name]) - set(ref) <= {"nullable"}, name
    assert ours["seed"].get("nullable") is True and "seed" not in reference["required"]
    assert committed_schema()["components"]["schemas"]["Output"] == reference["output"] | {"title": "Output"}


@needs_shared
def test_ratio_table_matches_runway() -> None:
    shared = json.loads((SHARED / "api" / "ratio-table.json").read_text())
    ours = {res: {ar: list(size) for ar, size in table.items()} for res, table in OUTPUT_SIZES.items()}
    assert ours == {k: v for k, v in shared.items() if k != "about"}


@needs_shared
def test_cog_yaml_is_valid_and_pinned() -> None:
    config = yaml.safe_load((ROOT / "cog.yaml").read_text())
    schema = json.loads((SHARED / "cog" / "config_schema_v1.0.json").read_text())
    jsonschema.validate(config, schema)
    assert config["build"]["gpu"] is True and config["run"] == "predict.py:Predictor"
    requirements = (ROOT / config["build"]["python_requirements"]).read_text().splitlines()
    pins = [line for line in requirements if line and not line.startswith("#")]
    assert all("==" in line for line in pins), pins
    assert {p.split("==")[0] for p in pins} >= {"torch", "cog", "diffusers", "transformers"}


def test_settings_from_env() -> None:
    assert settings_from_env({}) == Settings()
    s = settings_from_env(
        {"WEIGHTS_DIR": "/w", "GEN4_STEPS": "4", "GEN4_GUIDANCE": "3.5", "GEN4_OUTPUT_FORMAT": "WEBP"}
    )
    assert (str(s.weights_dir), s.steps, s.guidance, s.output_format) == ("/w", 4, 3.5, "webp")
    with pytest.raises(ValueError, match="GEN4_STEPS"):
        settings_from_env({"GEN4_STEPS": "many"})
    with pytest.raises(ValueError, match="GEN4_OUTPUT_FORMAT must be one of png, jpg, webp"):
        settings_from_env({"GEN4_OUTPUT_FORMAT": "gif"})
