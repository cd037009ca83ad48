"""Domain errors. The HTTP layer turns them into RFC 9457 problems (or WeChat errcodes on SDK paths)."""

from __future__ import annotations


class TongbanError(Exception):
    """Base of every error a client may see. `code` is stable and machine-readable."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init__(
        self, detail: str | None = None, *, field: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.field = field
        if code is not None:
            self.code = code


class InvalidInput(TongbanError):
    status = 422
    code = "invalid_input"
    title = "Invalid input"


class NotFound(TongbanError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(TongbanError):
    status = 409
    code = "conflict"
    title = "Conflict"


class Unauthorized(TongbanError):
    status = 401
    code = "unauthorized"
    title = "Authentication required"


class Forbidden(TongbanError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class RateLimited(TongbanError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(detail)
        self.retry_after = max(1, int(retry_after))


class StoreUnavailable(TongbanError):
    """PostgreSQL or Redis cannot be reached; the client should retry later."""

    status = 503
    code = "store_unavailable"
    title = "Service temporarily unavailable"

    def __init__(self, store: str, retry_after: int = 5) -> None:
        super().__init__(f"{store} is unavailable, retry later")
        self.store = store
        self.retry_after = retry_after


class ProviderUnavailable(TongbanError):
    """An outside provider (SMS gateway, registries, ...) timed out, failed or cannot be reached; retry later."""

    status = 503
    code = "provider_unavailable"
    title = "Service temporarily unavailable"

    def __init__(self, provider: str, retry_after: int = 5) -> None:
        super().__init__(f"{provider} is unavailable, retry later")
        self.provider = provider
        self.retry_after = retry_after
