"""RFC 9457 problem+json for every error on the API, with the offending field named and no internals."""

from __future__ import annotations

import msgspec
import pytest
from litestar import Litestar, get, post
from litestar.params import FromQuery, JSONBody
from litestar.testing import AsyncTestClient

from api.app import create_app
from core.errors import InvalidInput, StoreUnavailable
from core.settings import Settings


class Inner(msgspec.Struct):
    x: int


class Body(msgspec.Struct):
    phone: str
    count: int = 0
    inner: Inner | None = None


@post("/v1/test/echo", sync_to_thread=False)
def echo(data: JSONBody[Body]) -> Body:
    return data


@get("/v1/test/query", sync_to_thread=False)
def query(limit: FromQuery[int]) -> int:
    return limit


@get("/v1/test/invalid", sync_to_thread=False)
def invalid() -> None:
    raise InvalidInput("id_number: check digit does not match", field="id_number")


@get("/v1/test/crash", sync_to_thread=False)
def crash() -> None:
    raise RuntimeError("secret internals 210102199001011234 at /srv/app.py line 3")


@get("/v1/test/outage", sync_to_thread=False)
def outage() -> None:
    raise StoreUnavailable("PostgreSQL", 7)


@get("/v1/test/raw-outage")
async def raw_outage() -> None:
    raise ConnectionRefusedError("connect call failed")


@pytest.fixture(scope="module")
async def test_client(settings: Settings) -> AsyncTestClient[Litestar]:
    app = create_app(settings)
    for handler in (echo, query, invalid, crash, outage, raw_outage):
        app.register(handler)
    async with AsyncTestClient(app=app) as client:
        yield client


def assert_problem(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"].endswith(code) and body["title"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body  # type: ignore[no-any-return]


async def test_unknown_route_is_a_404_problem(test_client: AsyncTestClient[Litestar]) -> None:
    body = assert_problem(await test_client.get("/v1/no/such/thing"), 404, "not_found")
    assert body["instance"] == "/v1/no/such/thing"


async def test_wrong_method_is_a_405_problem(test_client: AsyncTestClient[Litestar]) -> None:
    assert_problem(await test_client.delete("/healthz"), 405, "http_405")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"phone": "1"', "body"),
        (b"\xff\xfe", "body"),
        (b'{"phone": "\xff"}', "body"),  # a string that is not UTF-8 (msgspec: UnicodeDecodeError)
        (b"", "body"),
        (b"[]", "body"),
        (b'{"phone": 1}', "phone"),
        (b"{}", "phone"),
        (b'{"phone": "x", "count": "many"}', "count"),
        (b'{"phone": "x", "inner": {}}', "inner.x"),
        (b'{"phone": "x", "inner": {"x": "s"}}', "inner.x"),
    ],
)
async def test_malformed_json_is_400_naming_the_field(
    test_client: AsyncTestClient[Litestar], raw: bytes, field: str
) -> None:
    response = await test_client.post(
        "/v1/test/echo", content=raw, headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 400, "malformed_request")
    assert body["field"] == field
    assert body["detail"].startswith(field + ":")


@pytest.mark.parametrize(
    ("url", "field"), [("/v1/test/query?limit=abc", "limit"), ("/v1/test/query", "limit")]
)
async def test_bad_query_parameter_is_named(
    test_client: AsyncTestClient[Litestar], url: str, field: str
) -> None:
    body = assert_problem(await test_client.get(url), 400, "malformed_request")
    assert body["field"] == field


async def test_domain_validation_is_422_with_field(test_client: AsyncTestClient[Litestar]) -> None:
    body = assert_problem(await test_client.get("/v1/test/invalid"), 422, "invalid_input")
    assert body["field"] == "id_number"


async def test_unexpected_error_is_500_without_internals(test_client: AsyncTestClient[Litestar]) -> None:
    response = await test_client.get("/v1/test/crash")
    body = assert_problem(response, 500, "internal_error")
    text = response.text
    for leak in ("secret internals", "210102199001011234", "Traceback", "app.py", "RuntimeError"):
        assert leak not in text
    assert body["detail"] == "the server could not complete this request"


async def test_store_outage_is_503_with_retry_after(test_client: AsyncTestClient[Litestar]) -> None:
    response = await test_client.get("/v1/test/outage")
    assert_problem(response, 503, "store_unavailable")
    assert response.headers["retry-after"] == "7"


async def test_unwrapped_connection_error_is_still_503(test_client: AsyncTestClient[Litestar]) -> None:
    response = await test_client.get("/v1/test/raw-outage")
    assert_problem(response, 503, "store_unavailable")
    assert int(response.headers["retry-after"]) > 0


async def test_request_id_is_echoed_when_sane_and_replaced_when_not(
    test_client: AsyncTestClient[Litestar],
) -> None:
    good = await test_client.get("/healthz", headers={"x-request-id": "abc-123.DEF_4"})
    assert good.headers["x-request-id"] == "abc-123.DEF_4"
    bad = await test_client.get("/healthz", headers={"x-request-id": "a b\x7f" + "x" * 100})
    assert bad.headers["x-request-id"] != "a b\x7f" + "x" * 100
    assert len(bad.headers["x-request-id"]) == 16
