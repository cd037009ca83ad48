"""Routes that anyone may call. Every other route must carry a guard; tests/unit/test_route_guards.py
walks the route table and fails on any route that is neither guarded nor listed here."""

PUBLIC_PATHS: frozenset[str] = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/schema",
        # OpenAPI UI and documents served by Litestar's OpenAPI router.
        "/docs",
        "/docs/openapi.json",
        "/docs/openapi.yaml",
        "/docs/openapi.yml",
        # Bench reference routes (mounted only with TONGBAN_BENCH_ROUTES=true).
        "/v1/bench/hello",
        "/v1/bench/db",
        "/v1/bench/redis",
    }
)
