"""Fuzzing the served OpenAPI document with schemathesis: valid (positive) and invalid (negative)
bodies, with and without a write key, against a running ingest and the real Redis. No answer may be
a 5xx, and the server stays up."""

from __future__ import annotations

import base64

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_process import Ingest
from schemathesis import GenerationMode

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

AUTH = {"Authorization": "Basic " + base64.b64encode(b"wk_one:").decode()}


def operations(ingest_server: Ingest) -> list[object]:
    document = httpx.get(ingest_server.url + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    found = [result.ok() for result in schema.get_all_operations()]
    return [op for op in found if op.method.upper() == "POST" and op.path.startswith("/v1/")]


def test_no_5xx_for_any_generated_request(ingest_server: Ingest) -> None:
    ops = operations(ingest_server)
    assert len(ops) == 9  # six calls, batch, import, webhook
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=ingest_server.url, timeout=10) as http:
        for op, mode in ((op, mode) for op in ops for mode in GenerationMode):

            @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=op.as_strategy(generation_mode=mode), authorized=st.booleans())  # type: ignore[attr-defined]
            def probe(case: schemathesis.Case, authorized: bool) -> None:
                request = case.as_transport_kwargs(base_url=ingest_server.url)
                headers = dict(request.get("headers") or {})
                if authorized:
                    headers |= AUTH
                response = http.request(
                    request["method"],
                    request["url"],
                    params=request.get("params"),
                    headers=headers,
                    content=request.get("data"),
                    json=request.get("json"),
                )
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code < 500, (request["url"], response.status_code, response.text)

            probe()
        assert http.get("/healthz").status_code == 200
    assert 200 in statuses  # the fuzzing reached the accepting path, not only refusals
