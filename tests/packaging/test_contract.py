"""The interface contract: schema file, Input fields vs Replicate's, ratio table, cog.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

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


@needs_shared
def test_cog_replicate_yaml_is_cog_yaml_with_the_tables_weights() -> None:
    """cog.replicate.yaml (Cog's managed weights, for Replicate) validates against Cog's schema, is
    what scripts/cog_weights.py writes now, and declares each repository of the one weights table
    at its pinned commit, mounted where the loader reads it."""
    from model.engine.weights import required_repos
    from scripts.cog_weights import MOUNT, OUT

    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "cog_weights.py"), "--check"], capture_output=True)
    assert check.returncode == 0, check.stderr.decode()
    config = yaml.safe_load(OUT.read_text())
    jsonschema.validate(config, json.loads((SHARED / "cog" / "config_schema_v1.0.json").read_text()))
    plain = yaml.safe_load((ROOT / "cog.yaml").read_text())
    assert "weights" not in plain  # cog build for docker run needs no weights.lock
    assert {k: v for k, v in config.items() if k not in ("weights", "environment")} == {
        k: v for k, v in plain.items() if k != "environment"
    }
    env = dict(line.split("=", 1) for line in config["environment"])
    assert env["WEIGHTS_DIR"] == MOUNT and settings_from_env(env).download_weights is False
    repos = required_repos()
    assert [w["source"]["uri"] for w in config["weights"]] == [f"hf://{r.repo_id}@{r.revision}" for r in repos]
    assert [w["target"] for w in config["weights"]] == [f"{MOUNT}/{r.folder}" for r in repos]
    assert [w["source"]["include"] for w in config["weights"]] == [[f"/{p}" for p in r.allow_patterns] for r in repos]


def test_the_managed_weights_mounts_hold_what_the_server_loads(tiny_weights: Path, tmp_path: Path) -> None:
    """Every variant's weights, mounted as Cog would (only the files each entry's include globs
    take from its repository, at its target), are enough for setup with downloads off: turbo and
    the safety checker, all five repositories, taken from the tiny weights in the same layout."""
    from model.serving.setup import build_service
    from scripts.cog_weights import MOUNT, replicate_config

    config = replicate_config((ROOT / "cog.yaml").read_text(), turbo=True, safety_checker=True)
    mount = tmp_path / "src-weights"
    for entry in config["weights"]:
        source = tiny_weights / entry["target"].removeprefix(f"{MOUNT}/")
        taken = [p for glob in entry["source"]["include"] for p in source.glob(glob.lstrip("/")) if p.is_file()]
        assert taken, entry
        for file in taken:
            dest = mount / entry["target"].removeprefix(f"{MOUNT}/") / file.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(file, dest)
    env = dict(line.split("=", 1) for line in config["environment"]) | {"WEIGHTS_DIR": str(mount)}
    settings = settings_from_env(env)
    assert settings.turbo and settings.safety_checker and not settings.download_weights
    service = build_service(replace(settings, device="cpu", steps=1))
    assert service.safety is not None
