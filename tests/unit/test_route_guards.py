"""Every route declares who may call it: a guard, or a place on the explicit public list."""

from litestar import Litestar, get

from api.app import create_app
from api.public import PUBLIC_PATHS, unguarded_routes
from core.settings import load_settings


def _full_app() -> Litestar:
    return create_app(load_settings({"TONGBAN_BENCH_ROUTES": "true"}))


def test_every_route_is_guarded_or_public() -> None:
    assert unguarded_routes(_full_app()) == []


def test_public_list_names_only_routes_that_exist() -> None:
    paths = {route.path for route in _full_app().routes}
    assert PUBLIC_PATHS - paths == set()


def test_an_unguarded_route_is_caught() -> None:
    @get("/v1/leaky", sync_to_thread=False)
    def leaky() -> str:
        return "personal data"

    app = _full_app()
    app.register(leaky)
    assert unguarded_routes(app) == ["GET /v1/leaky"]


def test_a_guarded_route_passes() -> None:
    def deny(connection: object, handler: object) -> None:
        raise PermissionError

    @get("/v1/private", guards=[deny], sync_to_thread=False)
    def private() -> str:
        return "ok"

    app = _full_app()
    app.register(private)
    assert unguarded_routes(app) == []
