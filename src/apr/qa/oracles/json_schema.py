"""JSON-mode oracle: the reply is one JSON document that validates against the requested schema (jsonschema)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from apr.qa.oracles.feature import FeatureVerdict, failed, passed


def schema_errors(document: Any, schema: dict[str, Any]) -> list[str]:
    """Every way ``document`` breaks ``schema`` (the validator of the schema's own draft), as short lines."""
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)  # a broken schema is the case's bug: raise, never judge with it
    validator = validator_class(schema)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message[:160]}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]


def check(content: str | None, finish_reason: str | None, schema: dict[str, Any]) -> FeatureVerdict:
    """Parses as JSON and matches ``schema``; a reply cut at max_tokens that still parses is judged as it is."""
    if content is None or not content.strip():
        return failed("the reply has no content", finish_reason=finish_reason)
    try:
        document = json.loads(content)
    except json.JSONDecodeError as err:
        cut = " (cut at max_tokens)" if finish_reason == "length" else ""
        return failed(f"the reply is not JSON{cut}: {err.msg} at {err.pos}", chars=len(content))
    errors = schema_errors(document, schema)
    if errors:
        return failed(f"JSON, but {len(errors)} schema violation(s): {'; '.join(errors[:3])}", violations=len(errors))
    return passed(f"one JSON {type(document).__name__} matching the schema", chars=len(content))
