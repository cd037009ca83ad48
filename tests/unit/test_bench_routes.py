"""The bench route registry: selection, scripts, and that every registered path exists in the app."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from bench.routes import DEFAULT_SCRIPT, HELLO, LUA_DIR, ROUTES, BenchRoute, SetupContext, select_routes
from core.settings import load_settings


async def _no_setup(_ctx: SetupContext) -> Mapping[str, str]:
    return {}


def test_hello_is_always_run_and_first() -> None:
    assert [r.name for r in select_routes(["redis"])] == [HELLO, "redis"]
    assert [r.name for r in select_routes(None)] == [r.name for r in ROUTES]


def test_unknown_route_names_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"nope.*known: hello"):
        select_routes(["db", "nope"])


def test_two_routes_with_one_name_are_refused() -> None:
    twice = (BenchRoute(HELLO, "GET", "/a"), BenchRoute(HELLO, "GET", "/b"))
    with pytest.raises(ValueError, match="share a name"):
        select_routes(None, twice)


def test_a_plain_get_needs_no_script_and_anything_else_gets_the_request_script() -> None:
    assert BenchRoute("g", "GET", "/g").script_path() is None
    assert BenchRoute("p", "POST", "/p").script_path() == LUA_DIR / DEFAULT_SCRIPT
    assert BenchRoute("t", "GET", "/t", setup=_no_setup).script_path() == LUA_DIR / DEFAULT_SCRIPT
    assert BenchRoute("c", "POST", "/c", script="custom.lua").script_path() == LUA_DIR / "custom.lua"


@pytest.mark.parametrize(("path", "target"), [("no-slash", None), ("/x", 0.0), ("/x", 2.0)])
def test_bad_registrations_are_refused(path: str, target: float | None) -> None:
    with pytest.raises(ValueError):
        BenchRoute("x", "GET", path, target_ratio=target)


def test_every_registered_script_exists() -> None:
    for route in ROUTES:
        script = route.script_path()
        assert script is None or script.is_file(), route.name
    assert (LUA_DIR / DEFAULT_SCRIPT).is_file()


def test_every_registered_route_is_served_with_bench_routes_on() -> None:
    from api.app import create_app

    app = create_app(load_settings({"TONGBAN_BENCH_ROUTES": "true", "TONGBAN_LOG_JSON": "true"}))
    served = {(method, route.path) for route in app.routes for method in getattr(route, "methods", ())}
    missing = [r.name for r in ROUTES if (r.method.upper(), r.path) not in served]
    assert missing == []
