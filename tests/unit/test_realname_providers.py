"""The sandbox population registry and face check, and our HTTP adapters speaking to them (in process, over
httpx's ASGI transport: the same requests and answers as over a socket)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from structlog.testing import capture_logs

from auth.providers import HttpFaceCheck, HttpPopulationRegistry, ProviderRejected
from core.errors import ProviderUnavailable
from core.settings import Settings
from sandbox import face, population
from sandbox.providers import PROVIDERS
from scripts.sandbox_cmd import read_registry_csv
from tests.unit.test_realname_validation import random_id_number

ALICE = ("阿依古丽·买买提", random_id_number())
BOB = ("王小明", random_id_number())


def asgi(app: Litestar) -> httpx.ASGITransport:
    # httpx types the ASGI callable more narrowly than Litestar declares it.
    return httpx.ASGITransport(app=app)  # type: ignore[arg-type]


@pytest.fixture
def registry_app() -> Litestar:
    return population.create_app()


@pytest.fixture
def registry(registry_app: Litestar) -> Iterator[TestClient[Litestar]]:
    with TestClient(app=registry_app) as client:
        yield client


def test_both_providers_are_registered_with_real_settings() -> None:
    fields = set(Settings.__struct_fields__)
    for name in ("population", "face"):
        provider = PROVIDERS[name]
        assert {provider.port_setting, provider.url_setting} <= fields


def test_csv_import_then_only_the_exact_pair_matches(registry: TestClient[Litestar]) -> None:
    csv_body = f"\ufeffname,id_number\n{ALICE[0]},{ALICE[1]}\n\n{BOB[0]},{BOB[1].lower()}\nlonely\n,\n"
    answer = registry.post(
        "/registry/import", content=csv_body.encode(), headers={"content-type": "text/csv"}
    )
    assert answer.status_code == 200
    assert answer.json() == {"imported": 2, "total": 2, "skipped_lines": [5, 6]}

    def verify(name: str, id_number: str) -> bool:
        response = registry.post("/registry/verify", json={"name": name, "id_number": id_number})
        assert response.status_code == 200
        return bool(response.json()["match"])

    assert verify(*ALICE) and verify(*BOB)
    assert verify(BOB[0], BOB[1].upper())
    assert not verify(BOB[0], ALICE[1])  # a real ID number with someone else's name
    assert not verify("王小", BOB[1])
    assert not verify(ALICE[0], random_id_number())  # nobody
    assert registry.get("/registry/stats").json() == {"records": 2}
    assert registry.delete("/registry").json() == {"deleted": 2}
    assert not verify(*ALICE)


def test_json_import_as_rows_or_a_list(registry: TestClient[Litestar]) -> None:
    rows = [{"name": ALICE[0], "id_number": ALICE[1]}]
    assert registry.post("/registry/import", json={"rows": rows}).json()["imported"] == 1
    assert registry.post("/registry/import", json=[{"name": BOB[0], "id_number": BOB[1]}]).json() == {
        "imported": 1,
        "total": 2,
        "skipped_lines": [],
    }
    bad = registry.post("/registry/import", json={"rows": [{"name": "x"}]})
    assert bad.status_code == 400 and bad.json()["code"] == "isv.INVALID_PARAMETERS"


def test_verify_is_faulty_but_import_and_stats_keep_answering(registry: TestClient[Litestar]) -> None:
    registry.post("/sandbox/faults", json={"fail_next": 1})
    assert registry.get("/registry/stats").status_code == 200
    failed = registry.post("/registry/verify", json={"name": ALICE[0], "id_number": ALICE[1]})
    assert failed.status_code == 503 and failed.headers["retry-after"] == "1"
    assert (
        registry.post("/registry/verify", json={"name": ALICE[0], "id_number": ALICE[1]}).status_code == 200
    )


def test_neither_provider_logs_personal_data(registry: TestClient[Litestar]) -> None:
    with capture_logs() as logs, TestClient(app=face.create_app()) as face_client:
        registry.post("/registry/import", json={"rows": [{"name": ALICE[0], "id_number": ALICE[1]}]})
        registry.post("/registry/verify", json={"name": ALICE[0], "id_number": ALICE[1]})
        image = base64.b64encode(b"portrait").decode()
        face_client.post("/face/verify", json={"name": ALICE[0], "id_number": ALICE[1], "image": image})
    assert {entry["event"] for entry in logs} >= {"registry.imported", "registry.verified", "face.verified"}
    text = json.dumps(logs, ensure_ascii=False, default=str)
    for secret in (*ALICE, image):
        assert secret not in text


@pytest.mark.parametrize(("image", "score"), [(b"SPOOF-printed-photo", 0.1), (b"\xff\xd8\xff live", 0.97)])
def test_face_score_is_steered_by_the_image(image: bytes, score: float) -> None:
    with TestClient(app=face.create_app()) as client:
        body = {"name": BOB[0], "id_number": BOB[1], "image": base64.b64encode(image).decode()}
        assert client.post("/face/verify", json=body).json() == {"score": score}
        refused = client.post("/face/verify", json={**body, "image": "!!"})
        assert refused.status_code == 400 and refused.json()["code"] == "isv.INVALID_PARAMETERS"


# --- the adapters --------------------------------------------------------------------------------------


def _registry(app: Litestar) -> HttpPopulationRegistry:
    return HttpPopulationRegistry("http://registry", timeout=2.0, transport=asgi(app))


async def test_registry_adapter_match_and_no_match(registry_app: Litestar) -> None:
    transport = asgi(registry_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        await client.post("/registry/import", json={"rows": [{"name": BOB[0], "id_number": BOB[1]}]})
    adapter = _registry(registry_app)
    assert await adapter.matches(*BOB) is True
    assert await adapter.matches(ALICE[0], BOB[1]) is False


async def test_registry_adapter_outage_is_provider_unavailable(registry_app: Litestar) -> None:
    transport = asgi(registry_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        await client.post("/sandbox/faults", json={"fail_next": 1})
    with pytest.raises(ProviderUnavailable) as down:
        await _registry(registry_app).matches(*BOB)
    assert down.value.retry_after == 1 and down.value.status == 503


async def test_registry_adapter_unreachable_is_provider_unavailable() -> None:
    adapter = HttpPopulationRegistry("http://127.0.0.1:9", timeout=1.0, retry_after=7)
    with pytest.raises(ProviderUnavailable) as down:
        await adapter.matches(*BOB)
    assert down.value.retry_after == 7


def _mocked(status: int, body: bytes) -> httpx.MockTransport:
    return httpx.MockTransport(lambda _request: httpx.Response(status, content=body))


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, b'{"code": "isv.INVALID_PARAMETERS", "message": "x"}', ProviderRejected),
        (404, b"not json", ProviderRejected),
        (429, b"{}", ProviderUnavailable),
        (200, b"<html>", ProviderUnavailable),
        (200, b'{"match": "yes"}', ProviderUnavailable),
    ],
)
async def test_registry_adapter_refusals_and_nonsense(
    status: int, body: bytes, error: type[Exception]
) -> None:
    adapter = HttpPopulationRegistry("http://registry", timeout=1.0, transport=_mocked(status, body))
    with pytest.raises(error):
        await adapter.matches(*BOB)


async def test_face_adapter_sends_identity_and_image_and_reads_the_score() -> None:
    seen: list[dict[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"score": 0.93})

    adapter = HttpFaceCheck("http://face/", timeout=1.0, transport=httpx.MockTransport(answer))
    assert await adapter.score(BOB[0], BOB[1], b"\x89PNG") == pytest.approx(0.93)
    assert seen == [{"name": BOB[0], "id_number": BOB[1], "image": base64.b64encode(b"\x89PNG").decode()}]


@pytest.mark.parametrize("body", [b'{"score": 1.5}', b'{"score": -0.1}', b'{"score": NaN}', b"{}"])
async def test_face_adapter_refuses_an_impossible_score(body: bytes) -> None:
    adapter = HttpFaceCheck("http://face", timeout=1.0, transport=_mocked(200, body))
    with pytest.raises(ProviderUnavailable):
        await adapter.score(*BOB, b"img")


async def test_face_adapter_against_the_sandbox() -> None:
    adapter = HttpFaceCheck("http://face", timeout=2.0, transport=asgi(face.create_app()))
    assert await adapter.score(*BOB, b"SPOOF!") == pytest.approx(0.1)
    assert await adapter.score(*BOB, b"a face") == pytest.approx(0.97)


# --- the CLI's CSV reader --------------------------------------------------------------------------------


def test_registry_csv_reader_skips_header_bom_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text(
        f"\ufeffName,ID_Number\n\n{ALICE[0]},{ALICE[1]}\n {BOB[0]} , {BOB[1]} \n", encoding="utf-8"
    )
    assert read_registry_csv(path) == [(3, *ALICE), (4, *BOB)]


def test_registry_csv_reader_names_the_bad_line_not_its_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "people.csv"
    path.write_text(f"{ALICE[0]},{ALICE[1]}\n{BOB[0]},{BOB[1]},extra\n", encoding="utf-8")
    with pytest.raises(SystemExit) as stopped:
        read_registry_csv(path)
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "got 3" in err and BOB[1] not in err and BOB[0] not in err


def test_import_body_shape_matches_the_sandbox() -> None:
    # The CLI posts {"rows": [{name, id_number}]}: the sandbox's own decoder must take it.
    body = msgspec.json.encode({"rows": [{"name": BOB[0], "id_number": BOB[1]}]})
    assert msgspec.json.decode(body, type=population.ImportIn).rows[0].name == BOB[0]
