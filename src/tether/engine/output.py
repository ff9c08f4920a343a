"""Checking a structured final answer against the agent's JSON schema."""

from __future__ import annotations

import json
from typing import Any


def check_output(text: str | None, schema: dict[str, Any]) -> str | None:
    """None when `text` is JSON matching `schema`; otherwise what is wrong, for the model to fix."""
    if not text:
        return "the answer is empty"
    try:
        value = json.loads(_strip_fence(text))
    except ValueError as e:
        return f"it is not valid JSON ({e})"
    import jsonschema  # loaded on first use: `import tether` stays light

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "the top level"
    return f"at {where}: {error.message}"


def parse_output(text: str) -> Any:
    return json.loads(_strip_fence(text))


def _strip_fence(text: str) -> str:
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        t = t.rsplit("```", 1)[0]
    return t
