"""Routes for enterprises (filled in by the accounts work)."""

from __future__ import annotations

from litestar import Router

router = Router(path="/v1", route_handlers=[], tags=["me"])
