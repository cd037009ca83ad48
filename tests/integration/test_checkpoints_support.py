"""Helpers for the checkpoint, venue and appeal tests (no tests here): checkpoints with credentials, passes
signed by the server's own signer (the issuer's pass signer, trusted through trustlist.TRUST) or by
strangers, and the layers of a pass taken apart to make broken ones."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
from cryptography.hazmat.primitives.asymmetric import ec

from core import clock, db
from core.stores import Stores
from health_code import checkpoints, codec, issuer, trustlist
from health_code.checkpoints import CheckpointCredentials
from health_code.verify import PassContent, encode_pass, sign_pass, tongban_claims
from tests.unit.test_pass_certs import Pki


@dataclass
class Scanner:
    """A checkpoint and its credentials."""

    credentials: CheckpointCredentials

    @property
    def id(self) -> UUID:
        return self.credentials.checkpoint.id

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": self.credentials.bearer}


async def make_checkpoint(stores: Stores, name: str | None = None) -> Scanner:
    async with db.connection(stores.pool, stores.settings) as conn:
        made = await checkpoints.create_checkpoint(conn, name or f"测试闸机 {secrets.token_hex(3)}")
    return Scanner(made)


async def trusted_signer(stores: Stores) -> issuer.PassSigner:
    """The issuer's pass signer, and this process's TrustStore reloaded so that it trusts it now."""
    signer = await issuer.pass_signer(stores)
    await trustlist.TRUST.reload(stores)
    return signer


def content(stores: Stores, **changes: Any) -> PassContent:
    """A green health pass of a random subject, issued a minute ago, valid an hour."""
    now = clock.now()
    base = PassContent(
        iss=stores.settings.health_pass_province,
        sub="u_" + secrets.token_hex(10),
        iat=now - timedelta(minutes=1),
        exp=now + timedelta(hours=1),
        colour="green",
        since=now - timedelta(days=3),
        name="张*",
        number="2101**********1234",
    )
    return msgspec.structs.replace(base, **changes)


async def good_pass(stores: Stores, **changes: Any) -> str:
    signer = await trusted_signer(stores)
    return sign_pass(content(stores, **changes), key=signer.key, cert=signer.cert)


def unchecked_pass(claims: dict[Any, Any], *, key: ec.EllipticCurvePrivateKey, kid: bytes) -> str:
    """Any claims, signed with `key` under `kid`, without sign_pass's checks (what a forger or a buggy
    issuer could make)."""
    return encode_pass(claims, key=key, kid=kid)


def stranger_pass(stores: Stores) -> str:
    """A well-made pass from an issuer the server does not trust (its own root and signer)."""
    pki = Pki.make("CN-XX")
    now = clock.now()
    signer = pki.signer(["health"], not_before=now - timedelta(days=1), not_after=now + timedelta(days=30))
    return sign_pass(content(stores), key=signer.key, cert=signer.cert)


def repack(body: bytes) -> str:
    """TB1: + Base45(zlib(body)): a well-formed text around whatever bytes."""
    return codec.pack(body)


def claims_of(pass_text: str) -> dict[Any, Any]:
    cose = codec.cose_sign1_decode(codec.unpack(pass_text)[1])
    claims: dict[Any, Any] = codec.cbor_loads(cose.payload)
    return claims


def expired_claims(stores: Stores, *, not_before: datetime) -> dict[Any, Any]:
    """A health pass that expired a minute ago, issued after `not_before` (the signer's)."""
    now = clock.now()
    iat = max(not_before + timedelta(seconds=5), now - timedelta(minutes=8))
    return tongban_claims(content(stores, iat=iat, exp=now - timedelta(minutes=1)))
