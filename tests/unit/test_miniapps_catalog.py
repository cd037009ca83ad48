"""The in-memory catalog snapshot on its own: who sees which version, filters, keyword search in Chinese,
pages and their cache, and that a snapshot only ever moves forward."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import miniapps.catalog as catalog_module
from core.errors import InvalidInput
from miniapps.catalog import CatalogCache, Snapshot, build_snapshot, check_query, grey_bucket, normalise_text

ORG = uuid.UUID("01930000-0000-7000-8000-0000000000aa")


def row(
    appid: str, name: str, state: str = "released", version: str = "1.0.0", **fields: Any
) -> dict[str, Any]:
    return {
        "appid": appid,
        "name": name,
        "description": fields.pop("description", ""),
        "category": fields.pop("category", "health"),
        "region_code": fields.pop("region_code", "150100"),
        "service_item_code": fields.pop("service_item_code", None),
        "icon_url": None,
        "organisation_id": ORG,
        "organisation_name": fields.pop("organisation_name", "呼和浩特市卫健委"),
        "state": state,
        "version": version,
        "min_level": fields.pop("min_level", "1"),
        "package_sha256": "0" * 64,
        "package_size": 10,
        "grey_percent": fields.pop("grey_percent", None),
        "grey_accounts": fields.pop("grey_accounts", []),
        "grey_regions": fields.pop("grey_regions", []),
    }


def page(snapshot: Snapshot, viewer: str | None = None, **query: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {"region": None, "category": None, "keyword": None, "offset": 0, "limit": 20}
    arguments.update(query)
    decoded: dict[str, Any] = msgspec.json.decode(snapshot.page(viewer=viewer, **arguments))
    return decoded


def versions(result: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [(item["appid"], item["version"], item["grey"]) for item in result["items"]]


def account_with_bucket(appid: str, inside: int) -> str:
    """An account id whose bucket for `appid` is below `inside` (or at least it, for inside < 0)."""
    while True:
        account = str(uuid.uuid4())
        bucket = grey_bucket(appid, account)
        if (inside >= 0 and bucket < inside) or (inside < 0 and bucket >= -inside):
            return account


def test_anonymous_and_citizen_views() -> None:
    snapshot = build_snapshot(
        7,
        [
            row("tb01", "甲应用"),
            row("tb01", "甲应用", "grey", "1.1.0", grey_percent=30),
            row("tb02", "乙应用", "grey", "0.1.0", grey_percent=0, grey_accounts=[ORG]),
            row("tb03", "丙应用"),
        ],
    )
    assert snapshot.generation == 7 and len(snapshot) == 3
    # Names sort by code point: 丙 (U+4E19), 乙 (U+4E59), 甲 (U+7532); 乙 has no released version.
    assert versions(page(snapshot)) == [("tb03", "1.0.0", False), ("tb01", "1.0.0", False)]
    inside, outside = account_with_bucket("tb01", 30), account_with_bucket("tb01", -30)
    assert versions(page(snapshot, inside)) == [("tb03", "1.0.0", False), ("tb01", "1.1.0", True)]
    assert versions(page(snapshot, outside)) == [("tb03", "1.0.0", False), ("tb01", "1.0.0", False)]
    # A grey-only app appears, in its place by name, for the listed account only.
    listed = str(ORG)
    expected_first = ("tb01", "1.1.0", True) if grey_bucket("tb01", listed) < 30 else ("tb01", "1.0.0", False)
    mine = page(snapshot, listed)
    assert versions(mine) == [("tb03", "1.0.0", False), ("tb02", "0.1.0", True), expected_first]
    assert mine["total"] == 3
    assert snapshot.item("tb02", viewer=None) is None and snapshot.item("tb02", viewer=listed) is not None
    assert snapshot.item("tb99", viewer=listed) is None


def test_pages_and_totals_with_grey_insertions() -> None:
    rows = [row(f"tb{n:02d}", f"应用{n:02d}") for n in range(10)]
    rows.append(row("tb05b", "应用05b", "grey", "0.1.0", grey_percent=100))
    snapshot = build_snapshot(1, rows)
    anonymous = page(snapshot, offset=4, limit=3)
    assert [i["appid"] for i in anonymous["items"]] == ["tb04", "tb05", "tb06"] and anonymous["total"] == 10
    citizen = page(snapshot, str(uuid.uuid4()), offset=4, limit=3)
    assert [i["appid"] for i in citizen["items"]] == ["tb04", "tb05", "tb05b"] and citizen["total"] == 11
    beyond = page(snapshot, offset=50, limit=3)
    assert beyond["items"] == [] and beyond["total"] == 10
    # Anonymous pages come from the page cache: the same bytes object.
    first = snapshot.page(viewer=None, region=None, category=None, keyword=None, offset=0, limit=5)
    again = snapshot.page(viewer=None, region=None, category=None, keyword=None, offset=0, limit=5)
    assert first is again


def test_region_and_category_filters() -> None:
    snapshot = build_snapshot(
        1,
        [
            row("tb01", "全区", region_code="150000", category="tax"),
            row("tb02", "市级", region_code="150100"),
            row("tb03", "区县", region_code="150102"),
            row("tb04", "包头", region_code="150200"),
            row("tb05", "辽宁", region_code="210000"),
        ],
    )
    ids = lambda result: sorted(i["appid"] for i in result["items"])  # noqa: E731
    assert ids(page(snapshot, region="150102")) == ["tb01", "tb02", "tb03"]
    assert ids(page(snapshot, region="150100")) == ["tb01", "tb02", "tb03"]
    assert ids(page(snapshot, region="150000")) == ["tb01", "tb02", "tb03", "tb04"]
    assert ids(page(snapshot, region="210102")) == ["tb05"]
    assert ids(page(snapshot, category="tax")) == ["tb01"]
    assert ids(page(snapshot, region="150200", category="health")) == ["tb04"]


def test_keyword_search_in_chinese_names_first() -> None:
    snapshot = build_snapshot(
        1,
        [
            row("tb01", "甲 健康码", description="扫码通行"),
            row("tb02", "乙 政务", description="申领健康码与核酸结果"),
            row(
                "tb03", "丙 公积金", organisation_name="住房公积金管理中心", service_item_code="SI-HOUSING-01"
            ),
            row("tb04", "Ｔｏｎｇｂａｎ 助手", description="English too"),
        ],
    )
    ids = lambda result: [i["appid"] for i in result["items"]]  # noqa: E731
    # The name match first, even though 乙 sorts before 甲.
    assert ids(page(snapshot, keyword=normalise_text("健康码"))) == ["tb01", "tb02"]
    assert ids(page(snapshot, keyword=normalise_text("健康"))) == ["tb01", "tb02"]
    assert ids(page(snapshot, keyword=normalise_text("管理中心"))) == ["tb03"]
    assert ids(page(snapshot, keyword=normalise_text("si-housing"))) == ["tb03"]
    # Full-width letters, case and spaces do not matter.
    assert ids(page(snapshot, keyword=normalise_text("tong ban"))) == ["tb04"]
    assert ids(page(snapshot, keyword=normalise_text("核酸结果"))) == ["tb02"]
    assert ids(page(snapshot, keyword=normalise_text("不存在"))) == []


@given(st.lists(st.text(alphabet="健康码社保公积金医保缴费查询ab", min_size=1, max_size=8), min_size=1, max_size=12),
       st.text(alphabet="健康码社保公积金医保缴费查询ab", min_size=1, max_size=3))  # fmt: skip
def test_search_finds_exactly_the_apps_containing_the_keyword(names: list[str], keyword: str) -> None:
    rows = [row(f"tb{n:03d}", name) for n, name in enumerate(names)]
    snapshot = build_snapshot(1, rows)
    found = {i["appid"] for i in page(snapshot, keyword=keyword, limit=100)["items"]}
    assert found == {
        f"tb{n:03d}" for n, name in enumerate(names) if keyword in name + "\x01呼和浩特市卫健委\x01"
    }


def test_check_query_names_the_parameter() -> None:
    assert check_query("150100", "tax", " 健康 码 ", 0, 20) == ("150100", "tax", "健康码")
    assert check_query(None, None, "   ", 0, 1) == (None, None, None)
    for arguments, field in (
        (("1501", None, None, 0, 20), "region"),
        ((None, "x" * 40, None, 0, 20), "category"),
        ((None, None, "q" * 33, 0, 20), "q"),
        ((None, None, None, -1, 20), "offset"),
        ((None, None, None, 0, 101), "limit"),
    ):
        try:
            check_query(*arguments)  # type: ignore[arg-type]
        except InvalidInput as refused:
            assert refused.field == field
        else:
            raise AssertionError(f"{arguments} accepted")


async def test_a_snapshot_never_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = CatalogCache()
    newer, older = build_snapshot(5, [row("tb01", "新")]), build_snapshot(4, [row("tb01", "旧")])
    cache._snapshot = newer
    assert cache.generation == 5 and cache.loaded

    async def lost_race(stores: object) -> Snapshot:  # read generation 4 while 5 was being put in place
        return older

    monkeypatch.setattr(catalog_module, "load_snapshot", lost_race)
    assert await cache.refresh(None) is newer  # type: ignore[arg-type]
    assert await cache.refresh(None, at_least=5) is newer  # type: ignore[arg-type]
    assert cache.generation == 5
