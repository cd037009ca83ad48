"""Accounts made in process through the real service functions (for integration tests that need a citizen
without running the sandbox SMS gateway)."""

from __future__ import annotations

import secrets
from uuid import UUID

from auth import service
from auth.models import Device, LoginRequest, TokenPair
from auth.realname import store_identity
from core.db import transaction
from core.stores import Stores


async def login_in_process(stores: Stores, phone: str, device: str = "phone-1") -> TokenPair:
    """Log `phone` in through auth.service.login with a code issued as the SMS would carry it."""
    challenge, code = await service.issue_login_code(stores, phone)
    request = LoginRequest(phone=phone, code=code, challenge_id=challenge, device=Device(id=device))
    # Each call from its own address: the per-IP login limit is not what these tests are about.
    return await service.login(stores, request, f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.1")


async def verify_in_process(stores: Stores, account_id: UUID, name: str, id_number: str) -> None:
    """What a successful real-name verification stores (L2), without the registry round trip."""
    vault = await stores.vault()
    async with transaction(stores.pool, stores.settings) as conn:
        await store_identity(conn, vault, account_id, name, id_number)
