"""The Litestar app factory: lifespan opens the stores, routes are mounted per capability."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get
from litestar.config.cors import CORSConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

from api import (
    checkpoints,
    enterprises,
    health_pass,
    inbox,
    miniapp_login,
    miniapps,
    onecode,
    ratings,
    realname,
    rights,
    sdk,
    staff,
    terminals,
)
from api.auth import auth_router, jwks, me_router
from api.bench import bench_router
from api.deps import DEPENDENCIES
from api.health import healthz, readyz
from api.middleware import request_id_middleware
from api.problems import EXCEPTION_HANDLERS
from auth.revocation import REVOKED
from core import logging as tongban_logging
from core.settings import Settings, get_settings
from core.stores import close_stores, open_stores
from onecode.providers import close_providers

VERSION = "0.1.0"


@get("/schema", include_in_schema=False, sync_to_thread=False)
def openapi_document(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The OpenAPI 3.1 document (the UI at /docs reads the same one)."""
    return Response(
        msgspec.json.encode(request.app.openapi_schema.to_schema()), media_type="application/json"
    )


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    tongban_logging.configure(settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.stores = await open_stores(settings)
        revocations = asyncio.create_task(REVOKED.run(app.state.stores))
        try:
            yield
        finally:
            revocations.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await revocations
            await close_stores(app.state.stores)
            await close_providers()  # the one-code provider adapters' pools of this loop

    prometheus = PrometheusConfig(
        app_name="tongban", prefix="tongban", group_path=True, exclude=["/metrics", "/healthz", "/readyz"]
    )
    route_handlers: list[Any] = [
        healthz,
        readyz,
        openapi_document,
        PrometheusController,
        jwks,
        auth_router,
        me_router,
        realname.router,
        enterprises.router,
        rights.router,
        inbox.router,
        miniapps.router,
        miniapps.catalog_router,
        staff.router,
        checkpoints.router,
        health_pass.router,
        ratings.router,
        sdk.router,
        miniapp_login.router,
        onecode.router,
        terminals.router,
    ]
    if settings.bench_routes:
        route_handlers.append(bench_router)

    return Litestar(
        route_handlers=route_handlers,
        lifespan=[
            lifespan,
            miniapps.catalog_lifespan,
            health_pass.lifespan,
            checkpoints.scans_lifespan,
            terminals.rides_lifespan,
        ],
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[request_id_middleware, prometheus.middleware],
        cors_config=CORSConfig(allow_origins=list(settings.cors_origins)) if settings.cors_origins else None,
        openapi_config=OpenAPIConfig(
            title="Tongban",
            version=VERSION,
            description="Backend of a citizen super-app. Errors are RFC 9457 problem+json.",
            path="/docs",
            render_plugins=[SwaggerRenderPlugin(path="/")],
            components=Components(
                security_schemes={
                    "citizen": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT"),
                    "terminal": SecurityScheme(
                        type="apiKey",
                        name="X-Signature",
                        security_scheme_in="header",
                        description=(
                            "One-code terminals sign every request: X-Terminal-Id, X-Timestamp (unix seconds,"
                            " within 90 s), X-Nonce (16-64 of [A-Za-z0-9_-], never reused) and X-Signature ="
                            " lowercase hex HMAC-SHA256(secret, METHOD \\n path?query \\n sha256hex(body)"
                            " \\n timestamp \\n nonce). See docs/terminals.md."
                        ),
                    ),
                }
            ),
        ),
        debug=False,
        logging_config=None,  # core.logging owns logging: JSON, request ids, redaction, no tracebacks
    )
