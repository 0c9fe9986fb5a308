"""/openapi.json describes both completion endpoints' request bodies, though their routes read the body
themselves (admission runs first), so a client generator or an API fuzzer can use it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest


@pytest.fixture(scope="module")
def document(server) -> dict[str, Any]:
    resp = httpx.get(server.url + "/openapi.json", timeout=30)
    assert resp.status_code == 200
    return resp.json()


def _resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


@pytest.mark.parametrize(("path", "required"), [
    ("/v1/completions", {"prompt"}),
    ("/v1/chat/completions", {"messages"}),
])
def test_both_bodies_are_declared_with_their_required_fields(document, path, required):
    body = document["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    schema = _resolve(document, body["content"]["application/json"]["schema"]["$ref"])
    assert set(schema["required"]) == required
    assert {"max_tokens", "temperature", "stop", "seed", "stream", "n"} <= set(schema["properties"])
    assert schema["properties"]["seed"]["anyOf"][0] == {"type": "integer", "minimum": -(2**63),
                                                        "maximum": 2**63 - 1}


def test_every_reference_resolves_under_components(document):
    refs = _refs(document)
    assert "#/components/schemas/ChatMessage" in refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        _resolve(document, ref)
    assert "$defs" not in str(document)


def test_the_document_is_stable_across_requests(server, document):
    assert httpx.get(server.url + "/openapi.json", timeout=30).json() == document


def test_schemathesis_finds_both_bodies(document):
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_dict(document)
    for path in ("/v1/completions", "/v1/chat/completions"):
        operation = schema[path]["POST"]
        assert [b.media_type for b in operation.body] == ["application/json"]


def test_the_embeddings_body_is_declared(document):
    body = document["paths"]["/v1/embeddings"]["post"]["requestBody"]
    schema = _resolve(document, body["content"]["application/json"]["schema"]["$ref"])
    assert set(schema["required"]) == {"input"}
    assert {"model", "input", "encoding_format", "dimensions", "user", "priority", "cache"} <= set(schema["properties"])
