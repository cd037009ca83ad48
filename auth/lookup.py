"""Finding accounts by ID number for other capabilities (bulk imports of health records), without the ID
number ever reaching the database: callers hash it into the blind index here and look up by that."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg

from auth import repository
from auth.service import ID_NUMBER_INDEX
from core.pii.masking import normalize_id_number
from core.pii.vault import Vault

# Blind indexes per query: a few MB of parameters, one index probe each.
LOOKUP_CHUNK = 20_000


def id_number_index(vault: Vault, id_number: str) -> bytes:
    """The blind index accounts.id_number_bidx holds for this ID number (same purpose and normaliser)."""
    return vault.blind_index(id_number, purpose=ID_NUMBER_INDEX, normalize=normalize_id_number)


async def account_ids_by_id_number_index(
    conn: asyncpg.Connection, indexes: Sequence[bytes]
) -> dict[bytes, UUID]:
    """Account id per blind index, for those of `indexes` that belong to an account (others are absent)."""
    found: dict[bytes, UUID] = {}
    unique = list(dict.fromkeys(indexes))
    for start in range(0, len(unique), LOOKUP_CHUNK):
        for row in await repository.account_ids_by_id_number_bidx(conn, unique[start : start + LOOKUP_CHUNK]):
            found[bytes(row["id_number_bidx"])] = row["id"]
    return found


async def masked_identity(conn: asyncpg.Connection, account_id: UUID) -> tuple[str, str] | None:
    """(masked name, masked ID number) of a verified account, as GET /v1/me shows them (for the health
    pass, which carries only these); None when the account has no verified identity (or is erased)."""
    row = await repository.account_overview(conn, account_id)
    if row is None or not row["name_masked"] or not row["id_number_masked"]:
        return None
    return row["name_masked"], row["id_number_masked"]
