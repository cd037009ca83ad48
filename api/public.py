"""Routes that anyone may call. Every other route must carry a guard: unguarded_routes() lists offenders and
tests/unit/test_route_guards.py fails on any."""

from __future__ import annotations

from litestar import Litestar

PUBLIC_PATHS: frozenset[str] = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/schema",
        # OpenAPI UI and documents served by Litestar's OpenAPI router.
        "/docs",
        "/docs/{path:str}",
        "/docs/openapi.json",
        "/docs/oauth2-redirect.html",
        # Accounts: the ways in, and the public keys to check what comes out.
        "/v1/auth/sms-codes",
        "/v1/auth/login",
        "/v1/auth/refresh",
        "/.well-known/jwks.json",
        # Mini-app catalog: anonymous callers see released versions; a citizen's token adds their grey view.
        "/v1/catalog",
        "/v1/catalog/{appid:str}",
        # Mini-app SDK (WeChat-compatible): these authenticate by appid + AppSecret in the request itself.
        "/cgi-bin/token",
        "/cgi-bin/stable_token",
        "/sns/jscode2session",
        # Health pass: our signed trust list and its root, for checkpoints and other provinces.
        "/v1/trust-list",
        "/v1/trust-list/root.pem",
        # Bench reference routes (mounted only with TONGBAN_BENCH_ROUTES=true).
        "/v1/bench/hello",
        "/v1/bench/db",
        "/v1/bench/redis",
    }
)


def unguarded_routes(app: Litestar) -> list[str]:
    """'METHOD path' for every handler that has no guard and whose path is not on the public list.
    Litestar's automatic OPTIONS handlers (CORS preflight, no data) are not counted."""
    offenders: list[str] = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            methods = set(getattr(handler, "http_methods", set())) - {"OPTIONS"}
            if not methods or handler.resolve_guards() or route.path in PUBLIC_PATHS:
                continue
            offenders.extend(f"{method} {route.path}" for method in sorted(methods))
    return offenders
