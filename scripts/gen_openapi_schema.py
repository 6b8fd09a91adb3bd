"""Write .cog/openapi_schema.json from predict.py, following `cog build`'s rules.

    python scripts/gen_openapi_schema.py          # write it
    python scripts/gen_openapi_schema.py --check  # exit 1 if the committed file is stale

coglet reads the input schema only from .cog/openapi_schema.json, which `cog build` writes. The
cog CLI is not available everywhere, so this script builds the same document: cog's own inspector
(`cog._inspector.create_predictor`, the code the server uses to read predict.py) gives the inputs,
and the layout follows cog's OpenAPI service (coglet's `generate_openapi_schema`): an Input
component with x-order, choices as an enum component referenced through allOf, `nullable` for
Optional, and the fixed prediction envelope.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / ".cog" / "openapi_schema.json"

_ERROR_REF = {"$ref": "#/components/schemas/HTTPValidationError"}


def _title_single(name: str) -> str:
    return name[:1].upper() + name[1:]


def _title_words(name: str) -> str:
    return " ".join(_title_single(word) for word in name.split("_"))


def _json_response(schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": "Successful Response", "content": {"application/json": {"schema": schema}}}


def _error_response() -> dict[str, Any]:
    return {"description": "Validation Error", "content": {"application/json": {"schema": _ERROR_REF}}}


def input_component(info: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Input schema and the enum schemas of its choice fields."""
    from cog._adt import Repetition

    properties: dict[str, Any] = {}
    required: list[str] = []
    enums: dict[str, Any] = {}
    for name, field in info.inputs.items():
        prop: dict[str, Any] = {"x-order": field.order}
        if field.choices is not None:
            enum_name = _title_single(name)
            enums[enum_name] = {
                "title": enum_name,
                "description": "An enumeration.",
                "enum": list(field.choices),
                "type": field.type.primitive.json_type()["type"],
            }
            prop["allOf"] = [{"$ref": f"#/components/schemas/{enum_name}"}]
        else:
            prop["title"] = _title_words(name)
            prop.update(field.type.json_type())
        if field.default is None and field.type.repetition is Repetition.REQUIRED:
            required.append(name)
        if field.default is not None:
            prop["default"] = field.default
        if field.type.repetition is Repetition.OPTIONAL:
            prop["nullable"] = True
        if field.description is not None:
            prop["description"] = field.description
        for key, attr in (
            ("minimum", "ge"),
            ("maximum", "le"),
            ("minLength", "min_length"),
            ("maxLength", "max_length"),
            ("pattern", "regex"),
        ):
            if getattr(field, attr) is not None:
                prop[key] = getattr(field, attr)
        if field.deprecated:
            prop["deprecated"] = True
        properties[name] = prop
    schema: dict[str, Any] = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def build_schema(predictor_ref: str) -> dict[str, Any]:
    """The OpenAPI document for a `file.py:Class` predictor reference."""
    from cog._inspector import create_predictor

    module_file, class_name = predictor_ref.split(":")
    sys.path.insert(0, str(ROOT))
    info = create_predictor(Path(module_file).stem, class_name)
    input_schema, enums = input_component(info)
    components: dict[str, Any] = {"Input": input_schema, "Output": info.output.json_type(), **enums}
    components["PredictionRequest"] = {
        "title": "PredictionRequest",
        "type": "object",
        "properties": {
            "id": {"title": "Id", "type": "string"},
            "input": {"$ref": "#/components/schemas/Input"},
        },
    }
    response_props: dict[str, Any] = {
        "input": {"$ref": "#/components/schemas/Input"},
        "output": {"$ref": "#/components/schemas/Output"},
        "id": {"title": "Id", "type": "string"},
        "version": {"title": "Version", "type": "string"},
    }
    for stamp in ("created_at", "started_at", "completed_at"):
        response_props[stamp] = {"title": _title_words(stamp), "type": "string", "format": "date-time"}
    for key in ("status", "error", "logs"):
        response_props[key] = {"title": _title_words(key), "type": "string"}
    response_props["metrics"] = {"title": "Metrics", "type": "object"}
    components["PredictionResponse"] = {"title": "PredictionResponse", "type": "object", "properties": response_props}
    components["Status"] = {
        "title": "Status",
        "description": "An enumeration.",
        "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
        "type": "string",
    }
    components["HTTPValidationError"] = {
        "title": "HTTPValidationError",
        "type": "object",
        "properties": {
            "detail": {"title": "Detail", "type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}}
        },
    }
    components["ValidationError"] = {
        "title": "ValidationError",
        "required": ["loc", "msg", "type"],
        "type": "object",
        "properties": {
            "loc": {
                "title": "Location",
                "type": "array",
                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            },
            "msg": {"title": "Message", "type": "string"},
            "type": {"title": "Error Type", "type": "string"},
        },
    }
    plain = {"200": _json_response({})}
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {
            "/": {"get": {"summary": "Root", "operationId": "root__get", "responses": plain}},
            "/health-check": {
                "get": {"summary": "Healthcheck", "operationId": "healthcheck_health_check_get", "responses": plain}
            },
            "/predictions": {
                "post": {
                    "summary": "Predict",
                    "description": "Run a single prediction on the model",
                    "operationId": "predict_predictions_post",
                    "requestBody": {
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictionRequest"}}}
                    },
                    "responses": {
                        "200": _json_response({"$ref": "#/components/schemas/PredictionResponse"}),
                        "422": _error_response(),
                    },
                }
            },
            "/predictions/{prediction_id}/cancel": {
                "post": {
                    "summary": "Cancel",
                    "operationId": "cancel_predictions__prediction_id__cancel_post",
                    "parameters": [
                        {
                            "required": True,
                            "schema": {"title": "Prediction_id", "type": "string"},
                            "name": "prediction_id",
                            "in": "path",
                        }
                    ],
                    "responses": {"200": _json_response({}), "422": _error_response()},
                }
            },
        },
        "components": {"schemas": components},
    }


def render(predictor_ref: str) -> str:
    return json.dumps(build_schema(predictor_ref), indent=2) + "\n"


def predictor_ref_from_cog_yaml() -> str:
    config = yaml.safe_load((ROOT / "cog.yaml").read_text())
    return config.get("run") or config["predict"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed schema is stale")
    args = parser.parse_args()
    text = render(predictor_ref_from_cog_yaml())
    if args.check:
        if not SCHEMA_PATH.is_file() or SCHEMA_PATH.read_text() != text:
            print(f"{SCHEMA_PATH} is stale: run python scripts/gen_openapi_schema.py", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.parent.mkdir(exist_ok=True)
    SCHEMA_PATH.write_text(text)
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
