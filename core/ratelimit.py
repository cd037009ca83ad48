"""Rate limits that hold across every worker process: counters in Redis, checked and counted by one
atomic Lua script. Each window starts at its first hit (no double burst at a boundary)."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from core import redis as redis_mod
from core.errors import RateLimited
from core.settings import Settings

# KEYS: one counter per window. ARGV: limit1, window_ms1, limit2, window_ms2, ...
# Refuses (without counting) when any window is full and returns its remaining ms; else counts all, returns 0.
_SCRIPT = """
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i - 1])
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= limit then
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then ttl = tonumber(ARGV[2 * i]) end
    return ttl
  end
end
for i, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then
    redis.call('PEXPIRE', key, ARGV[2 * i])
  end
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    limit: int
    seconds: int


class Limiter:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._script = redis.register_script(_SCRIPT)

    async def hit(self, namespace: str, subject: str, windows: tuple[Window, ...]) -> None:
        """Count one hit for `subject` in every window, or raise RateLimited (429 with Retry-After).
        All windows of one subject share a hash tag, so the script runs on one Redis Cluster node."""
        keys = [redis_mod.key(f"rl:{namespace}", subject, w.name) for w in windows]
        args: list[int] = []
        for w in windows:
            args += [w.limit, w.seconds * 1000]
        async with redis_mod.guarded(self._settings):
            wait_ms = int(await self._script(keys=keys, args=args))
        if wait_ms > 0:
            raise RateLimited(retry_after=-(-wait_ms // 1000))
