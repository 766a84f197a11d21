"""The `$ref`s of a JSON document (OpenAPI, AsyncAPI) and their targets, for the tests that
check every reference of a generated document resolves inside it."""

from __future__ import annotations

from typing import Any


def refs(node: Any) -> list[str]:
    """Every `$ref` string anywhere under `node`, in document order."""
    found: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("$ref"), str):
                found.append(item["$ref"])
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return found


def resolve(document: dict[str, Any], ref: str) -> Any:
    """The node a local reference (`#/a/b`) names; AssertionError when there is none."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, ref
        node = node[part]
    return node
