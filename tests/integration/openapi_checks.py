"""What a client generated from a service's OpenAPI document would trip on."""

from __future__ import annotations

from typing import Any

PROBLEM_JSON = "application/problem+json"


def openapi_defects(document: dict[str, Any]) -> list[str]:
    """`$ref`s that do not resolve inside the document, and error answers (4xx, 5xx) that are
    documented as anything but `application/problem+json`. Empty when all is well."""
    defects: list[str] = []

    def resolves(ref: str) -> bool:
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not (ref.startswith("#/") and resolves(ref)):
                defects.append(f"{where}: unresolvable $ref {ref}")
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    walk(document, "#")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation.get("responses", {}).items():
                content = set(response.get("content", {}))
                if status[0] in "45" and content != {PROBLEM_JSON}:
                    defects.append(f"{method.upper()} {path} {status}: documented as {content}")
    return defects
