"""Demo data for `tongban demo seed`: a verified (L2) citizen, and the registry records that let anyone
try real-name verification and enterprise registration against the sandbox providers."""

from __future__ import annotations

from uuid import UUID

from auth import repository
from auth.realname import store_identity
from auth.service import PHONE_INDEX
from core import ids
from core.db import transaction
from core.pii.masking import mask_phone, normalize_phone
from core.stores import Stores

# 11010519491231002X is the worked example of GB 11643 and 91350100M000100Y43 of GB 32100: valid check
# characters, nobody's real identity.
DEMO_CITIZEN = {"phone": "13800138000", "name": "张三", "id_number": "11010519491231002X"}
DEMO_PEOPLE = [
    {"name": "张三", "id_number": "11010519491231002X"},
    {"name": "李四", "id_number": "110105198001011238"},
]
DEMO_ENTERPRISE = {
    "uscc": "91350100M000100Y43",
    "name": "通办示范科技有限公司",
    "status": "active",
    "legal_rep_name": "李四",
    "legal_rep_id_number": "110105198001011238",
}


async def ensure_demo_citizen(stores: Stores) -> UUID:
    """The demo citizen 张三 at L2 (log in with its phone; the code is in `tongban sms outbox`)."""
    vault = await stores.vault()
    phone, name, id_number = DEMO_CITIZEN["phone"], DEMO_CITIZEN["name"], DEMO_CITIZEN["id_number"]
    phone_bidx = vault.blind_index(phone, purpose=PHONE_INDEX, normalize=normalize_phone)
    async with transaction(stores.pool, stores.settings) as conn:
        existing = await repository.account_by_phone(conn, phone_bidx)
        if existing is not None:
            account_id: UUID = existing["id"]
            return account_id
        account_id = ids.new_id()
        phone_enc = await vault.encrypt(conn, phone, table="accounts", column="phone", row_id=account_id)
        await repository.insert_account(conn, account_id, phone_enc, phone_bidx, mask_phone(phone))
        await store_identity(conn, vault, account_id, name, id_number)
        await repository.add_event(conn, account_id, "registered", "demo")
        return account_id
