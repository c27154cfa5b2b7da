"""The OpenAPI document: it describes every route, and a schemathesis run finds no 5xx and no drift."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from .conftest import DATA, Api, Server

# Examples per operation; OFFLOAD_FUZZ_EXAMPLES raises it for a longer run.
EXAMPLES = int(os.environ.get("OFFLOAD_FUZZ_EXAMPLES", "30"))
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance]
requests_sent: list[str] = []


@pytest.fixture(name="fuzz_api", scope="module")
def _fuzz_api(server: Server) -> Iterator[Api]:
    api = Api(server)
    api.upload(DATA / "zipcodes.csv")
    yield api
    print(f"\nschemathesis sent {len(requests_sent)} requests")


@pytest.fixture(name="openapi_schema", scope="module")
def _openapi_schema(server: Server, fuzz_api: Api) -> Any:
    # Event streams stay open until their job ends, so a generated request would wait for its timeout.
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json").exclude(path_regex=r"/events$")


schema = schemathesis.pytest.from_fixture("openapi_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_its_document(case: Any, fuzz_api: Api) -> None:
    # Half the cases use the real session, so that generated ids and bodies reach past the 404.
    if case.path_parameters and "session_id" in case.path_parameters and len(requests_sent) % 2 == 0:
        case.path_parameters["session_id"] = fuzz_api.session_id
    requests_sent.append(case.operation.label)
    case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_api.token}"}, checks=CHECKS, timeout=30)


def test_document_lists_every_route(server: Server) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    operations = {(method.upper(), path) for path, methods in document["paths"].items() for method in methods}
    expected = {
        ("GET", "/healthz"), ("GET", "/readyz"), ("POST", "/api/sessions"), ("DELETE", "/api/sessions/{session_id}"),
        ("PUT", "/api/sessions/{session_id}/files/{name}"), ("POST", "/api/sessions/{session_id}/files"),
        ("GET", "/api/sessions/{session_id}/files"), ("GET", "/api/sessions/{session_id}/files/{file_id}/content"),
        ("DELETE", "/api/sessions/{session_id}/files/{file_id}"), ("GET", "/api/job-kinds"),
        ("POST", "/api/sessions/{session_id}/jobs"), ("GET", "/api/sessions/{session_id}/jobs"),
        ("GET", "/api/sessions/{session_id}/jobs/{job_id}"), ("POST", "/api/sessions/{session_id}/jobs/{job_id}/cancel"),
        ("GET", "/api/sessions/{session_id}/jobs/{job_id}/outputs/{name}"),
        ("GET", "/api/sessions/{session_id}/events"), ("GET", "/api/sessions/{session_id}/jobs/{job_id}/events"),
        ("GET", "/metrics"),
    }
    assert expected <= operations


def test_job_request_has_one_variant_per_kind(server: Server) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    kinds = httpx.get(f"{server.url}/api/job-kinds").json()["kinds"]
    variants = document["components"]["schemas"]["JobRequest"]["oneOf"]
    assert sorted(variant["properties"]["kind"]["const"] for variant in variants) == sorted(
        kind["name"] for kind in kinds)

    hash_variant = next(variant for variant in variants if variant["properties"]["kind"]["const"] == "hash")
    reference = hash_variant["properties"]["params"]["$ref"]
    params = document["components"]["schemas"][reference.rsplit("/", 1)[-1]]
    assert "algorithms" in params["properties"]


def test_docs_page_served(server: Server) -> None:
    response = httpx.get(f"{server.url}/docs")
    assert response.status_code == 200
    assert "openapi.json" in response.text
