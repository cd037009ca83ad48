"""What the health-pass tests share: verified (L2) citizens made through the real login and real-name
functions, and a status change driven through the status engine. No tests here."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TypeVar
from uuid import UUID

from stdnum.cn import ric

from auth.tokens import authenticate
from core.db import transaction
from core.stores import Stores
from health_code import status
from tests.support.accounts import login_in_process, verify_in_process
from tests.support.auth import new_phone

T = TypeVar("T")


def new_id_number() -> str:
    born = date(1985, 1, 1) + timedelta(days=secrets.randbelow(7000))  # region 210102 exists since 1983
    body = f"210102{born:%Y%m%d}{secrets.randbelow(1000):03d}"
    return body + ric.calc_check_digit(body + "0")


@dataclass
class Citizen:
    account_id: UUID
    token: str
    id_number: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def l2_citizen(stores: Stores, name: str = "张三") -> Citizen:
    """Log a new phone in, verify a real name for it (L2), and log in again: the new token says L2."""
    phone = new_phone()
    first = await login_in_process(stores, phone)
    account_id = (await authenticate(stores, first.access_token)).account_id
    id_number = new_id_number()
    await verify_in_process(stores, account_id, name, id_number)
    again = await login_in_process(stores, phone)
    assert (await authenticate(stores, again.access_token)).level == 2
    return Citizen(account_id=account_id, token=again.access_token, id_number=id_number)


async def l1_citizen(stores: Stores) -> Citizen:
    phone = new_phone()
    pair = await login_in_process(stores, phone)
    account_id = (await authenticate(stores, pair.access_token)).account_id
    return Citizen(account_id=account_id, token=pair.access_token, id_number="")


async def turn(stores: Stores, account_id: UUID, colour: status.Colour) -> list[status.Changed]:
    """A manual mark of `colour` by health-authority staff, and the recompute its job would run (its
    change is published on "health:status" like the worker's)."""
    async with transaction(stores.pool, stores.settings) as conn:
        await status.add_manual_mark(conn, account_id, colour=colour, reason="test", by="staff:test")
    return await status.recompute(stores, [account_id])


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 10.0) -> T:
    """The first non-None answer of `check`, tried every 50 ms."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answer = await check()
        if answer is not None:
            return answer
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.05)
