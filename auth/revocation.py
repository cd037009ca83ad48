"""The revocation set every API process consults on each token check, in memory (no I/O per request).

A revocation is written to PostgreSQL (sessions.revoked_at, the record) and published on Redis; every
process adds published session ids at once and, as a fallback for missed messages or a Redis outage, polls
PostgreSQL for revocations newer than its last look. Entries are dropped once every access token that could
name them has expired."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta

import structlog

from auth import repository
from core import clock
from core.db import connection
from core.stores import Stores

log = structlog.get_logger(__name__)
CHANNEL = "auth:revocations"
POLL_SECONDS = 1.0


class RevocationSet:
    def __init__(self, keep_seconds: float) -> None:
        self._keep = keep_seconds
        self._revoked: dict[str, float] = {}
        self._since: datetime | None = None

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._revoked

    def add(self, session_id: str) -> None:
        self._revoked[session_id] = time.monotonic() + self._keep

    def _prune(self) -> None:
        now = time.monotonic()
        for sid in [sid for sid, until in self._revoked.items() if until < now]:
            del self._revoked[sid]

    async def poll(self, stores: Stores) -> None:
        since = self._since or clock.now() - timedelta(seconds=self._keep)
        async with connection(stores.pool, stores.settings) as conn:
            rows = await repository.revoked_since(conn, since)
        for row in rows:
            self.add(str(row["id"]))
            since = max(since, row["revoked_at"])
        self._since = since
        self._prune()

    async def _listen(self, stores: Stores) -> None:
        while True:
            try:
                async with stores.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    while True:
                        message = await pubsub.get_message(timeout=0.5)
                        if message is not None and message.get("type") == "message":
                            data = message["data"]
                            self.add(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the PostgreSQL poll covers until it is back
                log.warning("revocations.listen_failed", exc_type=type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _poll_forever(self, stores: Stores) -> None:
        while True:
            try:
                await self.poll(stores)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("revocations.poll_failed", exc_type=type(exc).__name__)
            await asyncio.sleep(POLL_SECONDS)

    async def run(self, stores: Stores) -> None:
        """Keep the set current until cancelled."""
        with contextlib.suppress(Exception):
            await self.poll(stores)
        await asyncio.gather(self._listen(stores), self._poll_forever(stores))


async def publish(stores: Stores, session_ids: list[str]) -> None:
    """Tell every process now; PostgreSQL already has the record, so a failed publish only delays."""
    for sid in session_ids:
        REVOKED.add(sid)
    try:
        async with stores.redis.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.publish(CHANNEL, sid)
            await pipe.execute()
    except Exception as exc:
        log.warning("revocations.publish_failed", exc_type=type(exc).__name__)


# One per process. Entries live as long as the longest access token (plus clock skew).
REVOKED = RevocationSet(keep_seconds=15 * 60)
