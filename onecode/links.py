"""Linking a citizen's transit account (L2+), medical-insurance e-voucher (L3) and payment card (L2+), each
through its provider's adapter (onecode.providers); unlinking at any time.

What we keep: the transit account reference; the acquirer's token reference (the card number goes to the
acquirer once and is neither stored nor logged; only its last four digits are shown); the insured-person
reference under the PII vault (dropped at unlink). The providers know the citizen by an opaque reference per
provider (a keyed hash of the account id), never by our account id.

Provider calls run outside any transaction; a link change then re-issues the authorisations in one
transaction with the new link (onecode.authorisations.reissue_locked).
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal
from uuid import UUID

import asyncpg
import msgspec
import structlog
from stdnum import luhn

from auth.rights import disclose
from core import ids
from core.db import connection, transaction
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.ratelimit import Limiter, Window
from core.stores import Stores
from onecode import authorisations, providers, repository
from onecode.authorisations import AuthorisationView, LinkSummary

log = structlog.get_logger(__name__)

Kind = Literal["transit", "medical", "payment"]
KINDS: Final = ("transit", "medical", "payment")
LEVEL_REQUIRED: Final = {"transit": 2, "medical": 3, "payment": 2}
CHANGES_PER_HOUR: Final = 20
DISCLOSURE_ACTOR: Final = "system:onecode-link"
DISCLOSURE_REASON: Final = "link the medical-insurance e-voucher (the platform matches name and ID number)"
_CARD_NOISE = re.compile(r"[\s-]")
_CARD = re.compile(r"[0-9]{12,19}")  # [0-9], not \d: \d takes any Unicode digit


class LinkRequest(msgspec.Struct, frozen=True):
    """POST /v1/onecode/links. payment needs card_number (sent to the acquirer once, never kept)."""

    kind: Kind
    card_number: Annotated[str, msgspec.Meta(max_length=40)] | None = None


LinkView = LinkSummary


class LinkChange(msgspec.Struct, frozen=True, kw_only=True):
    """A link made or removed: the scenes linked now and the authorisations re-issued for them."""

    link: LinkView | None
    scenes: list[str]
    authorisations: list[AuthorisationView]


def mask_reference(reference: str) -> str:
    """Only the last four characters shown."""
    tail = reference[-4:] if len(reference) > 4 else ""
    return "*" * 4 + tail


def view(row: asyncpg.Record) -> LinkView:
    return LinkView(kind=row["kind"], reference=row["ref_masked"], linked_at=row["linked_at"])


def card_digits(card_number: str | None) -> str:
    """The card number's digits (spaces and dashes dropped), 12 to 19 of them with a valid Luhn check digit;
    InvalidInput naming `card_number` otherwise (the number itself is never repeated back)."""
    if not card_number:
        raise InvalidInput("card_number: required to link a payment card", field="card_number")
    digits = _CARD_NOISE.sub("", card_number)
    if not _CARD.fullmatch(digits) or not luhn.is_valid(digits):
        raise InvalidInput(
            "card_number: not a valid card number (12 to 19 digits, Luhn)", field="card_number"
        )
    return digits


async def _provider_account_ref(stores: Stores, account_id: UUID, kind: str) -> str:
    """What a provider knows the citizen by: stable per provider, unlinkable across providers."""
    vault = await stores.vault()
    return "tb" + vault.blind_index(str(account_id), purpose=f"onecode.{kind}.account_ref").hex()[:30]


async def _limit(stores: Stores, account_id: UUID) -> None:
    # Every change calls a provider and re-signs authorisations; an unlink also grows the revocation list.
    await Limiter(stores.redis, stores.settings).hit(
        "onecode-link", str(account_id), (Window("hour", CHANGES_PER_HOUR, 3600),)
    )


async def link(stores: Stores, account_id: UUID, level: int, request: LinkRequest) -> LinkChange:
    """Link one provider account for an account at real-name `level` (the caller's token's). 403
    insufficient_level below the kind's level, 409 already_linked when the kind is linked (unlink first),
    502/503 when the provider refuses or is away."""
    kind = request.kind
    if level < LEVEL_REQUIRED[kind]:
        raise Forbidden(
            f"linking {kind} needs real-name level L{LEVEL_REQUIRED[kind]}", code="insufficient_level"
        )
    digits = card_digits(request.card_number) if kind == "payment" else None
    if kind != "payment" and request.card_number is not None:
        raise InvalidInput("card_number: only for kind payment", field="card_number")
    settings = stores.settings
    async with connection(stores.pool, settings) as conn:
        if await repository.active_link(conn, account_id, kind) is not None:
            raise _already_linked(kind)
    await _limit(stores, account_id)
    account_ref = await _provider_account_ref(stores, account_id, kind)
    vault = await stores.vault()
    link_id = ids.new_id()
    provider_ref: str | None = None
    provider_ref_enc: bytes | None = None
    insured_ref = ""
    if kind == "transit":
        provider_ref = await providers.transit_operator(settings).link(account_ref)
        masked = mask_reference(provider_ref)
    elif kind == "payment":
        assert digits is not None
        provider_ref = await providers.payment_acquirer(settings).tokenise(account_ref, digits)
        masked = mask_reference(digits)
    else:
        async with transaction(stores.pool, settings) as conn:
            name = await disclose(
                conn, vault, account_id, "name", actor=DISCLOSURE_ACTOR, reason=DISCLOSURE_REASON
            )
            id_number = await disclose(
                conn, vault, account_id, "id_number", actor=DISCLOSURE_ACTOR, reason=DISCLOSURE_REASON
            )
        if not name or not id_number:
            raise Forbidden("linking medical needs a verified real name", code="insufficient_level")
        insured_ref = await providers.medical_insurance(settings).link(account_ref, name, id_number)
        masked = mask_reference(insured_ref)
    issuer = await authorisations.signer(stores)
    async with transaction(stores.pool, settings) as conn:
        await repository.lock_account(conn, account_id)
        if kind == "medical":
            provider_ref_enc = await vault.encrypt(
                conn,
                insured_ref,
                table=authorisations.LINKS_TABLE,
                column=authorisations.REF_COLUMN,
                row_id=link_id,
            )
        try:
            row = await repository.insert_link(
                conn,
                link_id=link_id,
                account_id=account_id,
                kind=kind,
                provider_ref=provider_ref,
                provider_ref_enc=provider_ref_enc,
                ref_masked=masked,
            )
        except asyncpg.UniqueViolationError:  # a concurrent request linked it first
            raise _already_linked(kind) from None
        reissued = await authorisations.reissue_locked(conn, issuer, settings, account_id, revoke_reason=None)
        scenes = [link["kind"] for link in await repository.active_links(conn, account_id)]
    log.info("onecode.linked", kind=kind, reissued=len(reissued))
    return LinkChange(link=view(row), scenes=_ordered(scenes), authorisations=reissued)


def _already_linked(kind: str) -> Conflict:
    return Conflict(f"{kind} is already linked: unlink it first", field="kind", code="already_linked")


def _ordered(kinds: list[str]) -> list[str]:
    return [kind for kind in KINDS if kind in kinds]


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidInput("kind: transit, medical or payment", field="kind")
    return kind


async def unlink(stores: Stores, account_id: UUID, kind: str) -> LinkChange:
    """Remove the link. The authorisations carrying it are revoked at once and re-issued without it (for
    the devices that held one); its handle stops resolving."""
    check_kind(kind)
    settings = stores.settings
    await _limit(stores, account_id)
    issuer = await authorisations.signer(stores)
    async with transaction(stores.pool, settings) as conn:
        await repository.lock_account(conn, account_id)
        existing = await repository.active_link(conn, account_id, kind)
        if existing is None:
            raise NotFound(f"{kind} is not linked", field="kind", code="not_linked")
        await repository.unlink(conn, existing["id"])
        reissued = await authorisations.reissue_locked(
            conn, issuer, settings, account_id, revoke_reason="unlinked"
        )
        scenes = [link["kind"] for link in await repository.active_links(conn, account_id)]
    log.info("onecode.unlinked", kind=kind, reissued=len(reissued))
    return LinkChange(link=None, scenes=_ordered(scenes), authorisations=reissued)


async def links(conn: asyncpg.Connection, account_id: UUID) -> list[LinkView]:
    """The account's active links (masked)."""
    return [view(row) for row in await repository.active_links(conn, account_id)]
