"""The citizen's one-code: links, device keys, the authorisation, history, lost phone."""

from __future__ import annotations

from litestar import Router

router = Router(path="/v1", route_handlers=[])
