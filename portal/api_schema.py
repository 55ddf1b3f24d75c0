"""OpenAPI: the error answers every operation can give, in the one error format."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "example": "not_found"},
                "message": {"type": "string", "example": "Not found."},
                "fields": {
                    "type": "object",
                    "description": "For invalid input: each field's messages.",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
            },
        }
    },
}

_ANSWERS = {
    "400": "Invalid input: `fields` names each parameter and what is wrong with it.",
    "401": "No token, or one unknown, revoked or expired (the message says which).",
    "403": "The token lacks the scope or the clinic permission this operation needs.",
    "404": "Not found: missing, or another clinic's (the two answers are the same).",
    "429": "Past the token's requests per minute; `Retry-After` says when to try again.",
    "500": "An unexpected error; it was recorded, and nothing about it is sent.",
}


def error_responses(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: declare the error answers and their schema."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    reference = {"$ref": "#/components/schemas/Error"}
    for path, item in result.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            takes_input = bool(operation.get("parameters") or operation.get("requestBody"))
            names_one = "{" in path or method in ("post", "delete")
            for status, description in _ANSWERS.items():
                if (status == "400" and not takes_input) or (status == "404" and not names_one):
                    continue
                operation["responses"].setdefault(
                    status,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": reference}},
                    },
                )
    return result
