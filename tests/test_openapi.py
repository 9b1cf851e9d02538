"""The OpenAPI schema declares the error answers each route really gives, with the error body it really
has; no Ray needed (no request here reaches the model)."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient

from serve_app.gateway.access import ApiKeys
from serve_app.gateway.service import EmbeddingService
from serve_app.http.asgi import create_http_app
from serve_app.http.errors import ApiError, error_response
from serve_app.http.protocol import ErrorBody
from serve_app.serving.config import AppArgs, RequestLimits

LIMITS = RequestLimits(max_body_bytes=1024)
KEY = "sk-test"
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
# What any POST can answer before or instead of a result: bad JSON, too big, invalid, overloaded,
# model unavailable, timed out, and without / with a wrong API key.
POST_ERRORS = {"400", "401", "403", "413", "422", "429", "503", "504"}


def make_app(api_keys: list[bytes] | None = None):
    service = EmbeddingService(model=object(), args=AppArgs(limits=LIMITS))  # the model is never called here
    return create_http_app(service, ApiKeys(api_keys or []))


@pytest.fixture(scope="module")
def client():
    with TestClient(make_app()) as c:
        yield c


@pytest.fixture(scope="module")
def schema(client) -> dict:
    return client.get("/openapi.json").json()


def test_every_post_route_declares_its_errors_with_the_error_body(schema):
    posts = {path: ops["post"] for path, ops in schema["paths"].items() if "post" in ops}
    assert set(posts) == {"/v1/embeddings", "/encode", "/score", "/embed", "/", "/embed_sparse", "/embed_all",
                          "/tokenize", "/decode"}
    for path, op in posts.items():
        errors = {status for status in op["responses"] if status >= "400"}
        assert errors >= POST_ERRORS, (path, sorted(errors))
        for status in errors:
            response = op["responses"][status]
            assert response["content"]["application/json"]["schema"] == ERROR_REF, (path, status)
            assert response["description"], (path, status)
    # FastAPI's default 422 body (`HTTPValidationError`) is not what this server sends: it is gone.
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_get_routes_declare_their_errors(schema):
    get = {path: ops["get"]["responses"] for path, ops in schema["paths"].items() if "get" in ops}
    assert set(get["/health"]) == {"200", "503"}  # public: no 401/403, exempt from admission: no 429
    assert {"401", "403", "429", "503", "504"} <= set(get["/info"])
    assert {"401", "403", "429"} <= set(get["/v1/models"])
    for responses in get.values():
        for status, response in responses.items():
            if status >= "400":
                assert response["content"]["application/json"]["schema"] == ERROR_REF


def test_error_body_schema_is_what_error_response_writes(schema):
    declared = schema["components"]["schemas"]["ErrorDetail"]
    for error in (ApiError(413, "too big", param="texts", code="too_many_texts"), ApiError(500, "internal error")):
        body = error_response(error).body
        parsed = ErrorBody.model_validate_json(body)  # extra="forbid": no field the model lacks
        assert set(parsed.error.model_fields_set) == set(declared["required"]) == {"message", "type", "param", "code"}


def test_answers_of_the_app_match_the_error_body(client):
    answers = [
        client.post("/encode", content=b"{not json"),  # 400
        client.post("/encode", json={"texts": []}),  # 422 (validation)
        client.post("/v1/embeddings", json={"input": []}),  # 422 (route)
        client.post("/encode", json={"texts": ["x" * 2000]}),  # 413 (body size)
        client.get("/no-such-route"),  # 404
        client.get("/encode"),  # 405
    ]
    assert [r.status_code for r in answers] == [400, 422, 422, 413, 404, 405]
    for response in answers:
        ErrorBody.model_validate_json(response.content)
    with TestClient(make_app([hashlib.sha256(KEY.encode()).digest()])) as locked:
        for headers, status in (({}, 401), ({"Authorization": "Bearer sk-wrong"}, 403)):
            response = locked.post("/encode", json={"texts": ["x"]}, headers=headers)
            assert response.status_code == status
            ErrorBody.model_validate_json(response.content)
        assert locked.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
