"""One-code terminals: bus validators upload rides, counters and POS resolve codes (HMAC-signed requests)."""

from __future__ import annotations

from litestar import Router

router = Router(path="/v1", route_handlers=[])
