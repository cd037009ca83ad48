"""SMS one-time codes: 6 digits from a CSPRNG, 5-minute life, single use, at most 5 wrong tries, bound to
phone + purpose + challenge. Only an HMAC of the code is kept (in Redis: an OTP may be lost, the user asks
again); checking and burning is one atomic script, so parallel guesses cannot exceed the try budget."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from enum import Enum

import redis.asyncio as aioredis

from core import redis as redis_mod
from core.masterkey import derived_key
from core.settings import Settings

CODE_DIGITS = 6
MAX_TRIES = 5

_VERIFY = """
local challenge = redis.call('HGET', KEYS[1], 'challenge')
if not challenge then return 'missing' end
if challenge ~= ARGV[1] then return 'missing' end
if redis.call('HGET', KEYS[1], 'mac') == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 'ok'
end
local tries = redis.call('HINCRBY', KEYS[1], 'tries', 1)
if tries >= tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[1])
  return 'burned'
end
return 'wrong'
"""


class Outcome(Enum):
    OK = "ok"
    WRONG = "wrong"  # a try was used up
    BURNED = "burned"  # that was the last try: the code is gone
    MISSING = "missing"  # expired, used, replaced by a newer code, or another challenge


def _key(phone_tag: str, purpose: str) -> str:
    return redis_mod.key("otp", phone_tag, purpose)


def _mac(settings: Settings, purpose: str, challenge_id: str, code: str) -> str:
    key = derived_key(settings, "otp-mac")
    return hmac.new(key, f"{purpose}:{challenge_id}:{code}".encode(), hashlib.sha256).hexdigest()


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


async def issue(
    redis: aioredis.Redis, settings: Settings, *, phone_tag: str, purpose: str, ttl_seconds: int
) -> tuple[str, str]:
    """(challenge_id, code). A new code replaces any earlier one for this phone and purpose."""
    code, challenge_id = new_code(), secrets.token_urlsafe(16)
    key = _key(phone_tag, purpose)
    async with redis_mod.guarded(settings), redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(
            key,
            mapping={
                "challenge": challenge_id,
                "mac": _mac(settings, purpose, challenge_id, code),
                "tries": 0,
            },
        )
        pipe.expire(key, ttl_seconds)
        await pipe.execute()
    return challenge_id, code


async def verify(
    redis: aioredis.Redis, settings: Settings, *, phone_tag: str, purpose: str, challenge_id: str, code: str
) -> Outcome:
    mac = _mac(settings, purpose, challenge_id, code)
    async with redis_mod.guarded(settings):
        result = await redis.eval(  # type: ignore[misc]
            _VERIFY, 1, _key(phone_tag, purpose), challenge_id, mac, str(MAX_TRIES)
        )
    return Outcome(result.decode() if isinstance(result, bytes) else result)
