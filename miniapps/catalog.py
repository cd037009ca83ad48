"""The catalog: the apps a citizen can open, as that citizen's grey-release view sees them.

A hot path, so it is answered from memory. Each API process holds a snapshot of every published app (its
released version and, if one is in grey, the grey version), built from PostgreSQL:
- at start-up, and whenever the catalog generation moves: every change the catalog shows bumps
  `miniapp_catalog_state.generation` in its own transaction and, once committed, is published on Redis
  (channel miniapps:catalog); each process reloads on the message, and a poll of the generation every
  `miniapp_catalog_poll_seconds` covers a missed message or a Redis outage.
- nothing else: a catalog request costs no I/O.

Each app's catalog item is JSON-encoded once per snapshot; a page is a join of those bytes. Query results
(region, category, keyword) and anonymous pages are kept per snapshot in small LRU maps.

Grey release: a citizen's bucket for an app is sha256("<appid>:<account id>") read as a big-endian integer,
mod 100 (grey_bucket). A grey version admits a citizen whose bucket is below its percentage, who is on its
account list, or who browses from one of its regions. Anonymous callers see released versions only.

Keyword search (`q`): Chinese has no spaces to split words on and pg_trgm's trigrams suit alphabetic words,
and the catalog must not query PostgreSQL per request anyway. So the keyword is matched as a substring
(like ILIKE '%q%') of each app's name, organisation, description and service item code, NFKC-normalised,
case-folded and without whitespace. All apps' texts sit in one string, so a search is a few str.find calls
in C over ~1 MB at 5,400 apps (well under a millisecond), and its result is cached for the snapshot. Apps
whose name contains the keyword come first.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import hashlib
import secrets
import unicodedata
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
import structlog
from stdnum import numdb

from core import ids
from core.db import connection, transaction
from core.errors import Conflict, InvalidInput, NotFound
from core.stores import Stores
from miniapps import analytics, repository
from miniapps.models import CatalogItem, OrganisationRef

log = structlog.get_logger(__name__)

CHANNEL = "miniapps:catalog"
RECENT_KEEP = 50
FAVOURITES_MAX = 200
MAX_LIMIT = 100
# Bounds of the per-snapshot caches: results are arrays of 4-byte positions, pages ~10 KiB each, so a
# snapshot's caches stay within a few tens of MB whatever parameters callers invent.
_QUERY_CACHE = 1024
_PAGE_CACHE = 1024


# --- regions (GB/T 2260) -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8192)
def region_known(code: str) -> bool:
    """A GB/T 2260 code in use today: a province (150000), a city (150100) or a county (150102)."""
    if len(code) != 6 or not code.isdigit():
        return False
    info: dict[str, str] = {k: v for _, props in numdb.get("cn/loc").info(code) for k, v in props.items()}
    county = info.get("county")
    if not county or "province" not in info:
        return False
    # Entries read "[1983-]name" (in use since), "[1983-1996]name" (retired) or just "name".
    return any(
        not entry.startswith("[") or entry[1:].split("]", 1)[0].endswith("-") for entry in county.split(",")
    )


def region_contains(outer: str, inner: str) -> bool:
    """Whether region `inner` lies within region `outer` (or is it)."""
    if outer.endswith("0000"):
        return inner[:2] == outer[:2]
    if outer.endswith("00"):
        return inner[:4] == outer[:4]
    return inner == outer


def regions_overlap(a: str, b: str) -> bool:
    """A province-wide app shows in each of its counties; browsing a province shows its counties' apps."""
    return region_contains(a, b) or region_contains(b, a)


# --- grey release ------------------------------------------------------------------------------------------


def grey_bucket(appid: str, account_id: str | UUID) -> int:
    """The citizen's bucket (0-99) for this app: the same on every process, machine and language."""
    digest = hashlib.sha256(f"{appid}:{account_id}".encode()).digest()
    return int.from_bytes(digest, "big") % 100


@dataclass(frozen=True, slots=True)
class Grey:
    appid: str
    percent: int
    accounts: frozenset[str]
    regions: tuple[str, ...]
    item: bytes

    def admits(self, account_id: str, region: str | None) -> bool:
        if account_id in self.accounts:
            return True
        if region is not None and any(region_contains(grey_region, region) for grey_region in self.regions):
            return True
        return self.percent > 0 and grey_bucket(self.appid, account_id) < self.percent


# --- the snapshot ------------------------------------------------------------------------------------------


def normalise_text(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


@dataclass(frozen=True, slots=True)
class Entry:
    appid: str
    name_key: str  # normalised name, for "name matches first"
    category: str
    region_code: str
    released: bytes | None
    grey: Grey | None

    def admits(self, viewer: str, region: str | None) -> bool:
        """Whether the app's grey version (if any) admits the viewer."""
        return self.grey is not None and self.grey.admits(viewer, region)

    def shown(self, grey: bool) -> bytes:
        """The grey item, or the released one (only asked of entries that have it)."""
        item = self.grey.item if grey and self.grey is not None else self.released
        assert item is not None
        return item


@dataclass(slots=True)
class _Query:
    key: tuple[str | None, str | None, str | None]
    positions: array[int]  # every matching app with a released or grey version, in display order
    anonymous: array[int]  # those with a released version
    grey_only: array[int]  # those with a grey version and no released one (a first release in grey)


def _page(items: Iterable[bytes], total: int, offset: int, limit: int) -> bytes:
    return b"".join(
        (b'{"items":[', b",".join(items), f'],"total":{total},"offset":{offset},"limit":{limit}}}'.encode())
    )


class Snapshot:
    """The published apps at one catalog generation. Immutable once built, apart from its caches."""

    def __init__(self, generation: int, entries: list[Entry], texts: list[str]) -> None:
        self.generation = generation
        self.entries = entries
        self.by_appid = {entry.appid: position for position, entry in enumerate(entries)}
        # One string for every app's searchable text; starts[i] is where app i's text begins.
        self._corpus = "\x00".join(texts)
        self._starts: list[int] = []
        offset = 0
        for text in texts:
            self._starts.append(offset)
            offset += len(text) + 1
        self._queries: OrderedDict[tuple[str | None, str | None, str | None], _Query] = OrderedDict()
        self._pages: OrderedDict[tuple[tuple[str | None, str | None, str | None], int, int], bytes] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self.entries)

    def _anonymous_page(self, query: _Query, offset: int, limit: int) -> bytes:
        key = (query.key, offset, limit)
        cached = self._pages.get(key)
        if cached is None:
            window = query.anonymous[offset : offset + limit]
            cached = _page(
                (self.entries[p].shown(False) for p in window), len(query.anonymous), offset, limit
            )
            self._pages[key] = cached
            if len(self._pages) > _PAGE_CACHE:
                self._pages.popitem(last=False)
        return cached

    def _search(self, keyword: str) -> list[int]:
        found: list[int] = []
        corpus, starts = self._corpus, self._starts
        at = corpus.find(keyword)
        while at != -1:
            position = bisect.bisect_right(starts, at) - 1
            found.append(position)
            if position + 1 >= len(starts):
                break
            at = corpus.find(keyword, starts[position + 1])
        return found

    def _query(self, region: str | None, category: str | None, keyword: str | None) -> _Query:
        key = (region, category, keyword)
        query = self._queries.get(key)
        if query is not None:
            self._queries.move_to_end(key)
            return query
        candidates: Iterable[int] = range(len(self.entries)) if keyword is None else self._search(keyword)
        matching = [
            position
            for position in candidates
            if (category is None or self.entries[position].category == category)
            and (region is None or regions_overlap(self.entries[position].region_code, region))
        ]
        if keyword is not None:
            by_name = [position for position in matching if keyword in self.entries[position].name_key]
            named = set(by_name)
            matching = by_name + [position for position in matching if position not in named]
        positions = array("i", matching)
        grey_only = array("i", (p for p in matching if self.entries[p].released is None))
        query = _Query(
            key=key,
            positions=positions,
            anonymous=array("i", (p for p in matching if self.entries[p].released is not None))
            if grey_only
            else positions,
            grey_only=grey_only,
        )
        self._queries[key] = query
        if len(self._queries) > _QUERY_CACHE:
            self._queries.popitem(last=False)
        return query

    def page(
        self,
        *,
        viewer: str | None,
        region: str | None,
        category: str | None,
        keyword: str | None,
        offset: int,
        limit: int,
    ) -> bytes:
        """The JSON of one page of the catalog as `viewer` (an account id, None: anonymous) sees it.

        Admission is decided only where it changes the answer: for first releases in grey (they add
        entries, so they move the page boundaries and the total) and for the grey apps on the page itself
        (they replace their released entry in place). A page without either is the cached anonymous one."""
        query = self._query(region, category, keyword)
        if viewer is None:
            return self._anonymous_page(query, offset, limit)
        entries = self.entries
        inserted = {p for p in query.grey_only if entries[p].admits(viewer, region)}
        visible: Sequence[int] = query.anonymous
        if inserted:
            visible = [p for p in query.positions if entries[p].released is not None or p in inserted]
        window = visible[offset : offset + limit]
        admitted = {p for p in window if p in inserted or entries[p].admits(viewer, region)}
        if not admitted:
            return self._anonymous_page(query, offset, limit)
        return _page((entries[p].shown(p in admitted) for p in window), len(visible), offset, limit)

    def item(self, appid: str, *, viewer: str | None, region: str | None = None) -> bytes | None:
        """The JSON of one app as `viewer` sees it, or None when it shows them nothing."""
        position = self.by_appid.get(appid)
        if position is None:
            return None
        entry = self.entries[position]
        if viewer is not None and entry.admits(viewer, region):
            return entry.shown(True)
        return entry.released


def _encode_item(row: Any, grey: bool) -> bytes:
    min_level = row["min_level"]
    return msgspec.json.encode(
        CatalogItem(
            appid=row["appid"],
            name=row["name"],
            description=row["description"],
            category=row["category"],
            region_code=row["region_code"],
            organisation=OrganisationRef(id=row["organisation_id"], name=row["organisation_name"]),
            service_item_code=row["service_item_code"],
            icon_url=row["icon_url"],
            version=row["version"],
            grey=grey,
            min_level=int(min_level) if min_level is not None else 1,
            package_sha256=row["package_sha256"],
            package_size=row["package_size"],
        )
    )


def build_snapshot(generation: int, rows: Iterable[Any]) -> Snapshot:
    """A snapshot from catalog_rows() (records or dicts): one entry per app, sorted by name."""
    released: dict[str, Any] = {}
    grey: dict[str, Any] = {}
    for row in rows:
        (released if row["state"] == "released" else grey)[row["appid"]] = row
    apps = sorted(
        set(released) | set(grey), key=lambda appid: ((released.get(appid) or grey[appid])["name"], appid)
    )
    entries: list[Entry] = []
    texts: list[str] = []
    for appid in apps:
        released_row, grey_row = released.get(appid), grey.get(appid)
        app = released_row if released_row is not None else grey_row
        assert app is not None
        grey_entry = None
        if grey_row is not None:
            grey_entry = Grey(
                appid=appid,
                percent=grey_row["grey_percent"] or 0,
                accounts=frozenset(str(account) for account in grey_row["grey_accounts"] or ()),
                regions=tuple(grey_row["grey_regions"] or ()),
                item=_encode_item(grey_row, grey=True),
            )
        entries.append(
            Entry(
                appid=appid,
                name_key=normalise_text(app["name"]),
                category=app["category"],
                region_code=app["region_code"],
                released=_encode_item(released_row, grey=False) if released_row is not None else None,
                grey=grey_entry,
            )
        )
        searchable = (
            app["name"],
            app["organisation_name"],
            app["description"],
            app["service_item_code"] or "",
        )
        texts.append(normalise_text("\x01".join(searchable)))
    return Snapshot(generation, entries, texts)


async def load_snapshot(stores: Stores) -> Snapshot:
    async with (
        connection(stores.pool, stores.settings) as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        generation = await repository.catalog_generation(conn)
        rows = await repository.catalog_rows(conn)
    return build_snapshot(generation, rows)


# --- the per-process cache ---------------------------------------------------------------------------------


class CatalogCache:
    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None

    @property
    def loaded(self) -> bool:
        return self._snapshot is not None

    @property
    def generation(self) -> int:
        return self._snapshot.generation if self._snapshot is not None else 0

    async def refresh(self, stores: Stores, *, at_least: int | None = None) -> Snapshot:
        """Reload unless the snapshot already has generation `at_least`; an older load never replaces a
        newer snapshot (two reloads may race)."""
        current = self._snapshot
        if current is not None and at_least is not None and current.generation >= at_least:
            return current
        snapshot = await load_snapshot(stores)
        current = self._snapshot
        if current is None or snapshot.generation >= current.generation:
            self._snapshot = current = snapshot
            log.debug("catalog.loaded", generation=snapshot.generation, apps=len(snapshot))
        return current

    async def current(self, stores: Stores) -> Snapshot:
        snapshot = self._snapshot
        if snapshot is None:
            snapshot = await self.refresh(stores)
        return snapshot

    async def _listen(self, stores: Stores) -> None:
        while True:
            try:
                async with stores.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is None or message.get("type") != "message":
                            continue
                        with contextlib.suppress(ValueError):
                            generation = int(message["data"])
                            if generation > self.generation:
                                await self.refresh(stores, at_least=generation)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the poll covers until it is back
                log.warning("catalog.listen_failed", exc_type=type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _poll(self, stores: Stores) -> None:
        while True:
            await asyncio.sleep(stores.settings.miniapp_catalog_poll_seconds)
            try:
                async with connection(stores.pool, stores.settings) as conn:
                    generation = await repository.catalog_generation(conn)
                if generation != self.generation:
                    await self.refresh(stores, at_least=generation)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("catalog.poll_failed", exc_type=type(exc).__name__)

    async def run(self, stores: Stores) -> None:
        """Keep the snapshot current until cancelled."""
        try:
            await self.refresh(stores)
        except Exception as exc:  # requests load it on first use; the poll retries
            log.warning("catalog.initial_load_failed", exc_type=type(exc).__name__)
        await asyncio.gather(self._listen(stores), self._poll(stores))


# One per process, like the revocation set.
CATALOG = CatalogCache()


async def published(stores: Stores, generation: int) -> None:
    """After the commit of a change the catalog shows: tell every process, and reload this one's now."""
    try:
        await stores.redis.publish(CHANNEL, str(generation))
    except Exception as exc:  # the generation poll catches up
        log.warning("catalog.publish_failed", exc_type=type(exc).__name__)
    if CATALOG.loaded:
        try:
            await CATALOG.refresh(stores, at_least=generation)
        except Exception as exc:  # the change is committed; the poll reloads this process shortly
            log.warning("catalog.reload_failed", exc_type=type(exc).__name__)


# --- catalog requests --------------------------------------------------------------------------------------


def check_query(
    region: str | None, category: str | None, q: str | None, offset: int, limit: int
) -> tuple[str | None, str | None, str | None]:
    """(region, category, keyword) checked and normalised; 422 naming the parameter otherwise."""
    if region is not None and (len(region) != 6 or not region.isdigit()):
        raise InvalidInput("region: a 6-digit GB/T 2260 code", field="region", code="invalid_region")
    if category is not None and not (1 <= len(category) <= 32):
        raise InvalidInput("category: 1 to 32 characters", field="category")
    keyword = None
    if q is not None:
        if len(q) > 32:
            raise InvalidInput("q: at most 32 characters", field="q")
        keyword = normalise_text(q) or None
    if offset < 0 or offset > 100_000:
        raise InvalidInput("offset: 0 to 100000", field="offset")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit: 1 to {MAX_LIMIT}", field="limit")
    return region, category, keyword


async def catalog_page(
    stores: Stores,
    *,
    viewer: UUID | None,
    region: str | None,
    category: str | None,
    q: str | None,
    offset: int,
    limit: int,
) -> bytes:
    region, category, keyword = check_query(region, category, q, offset, limit)
    snapshot = await CATALOG.current(stores)
    return snapshot.page(
        viewer=str(viewer) if viewer is not None else None,
        region=region,
        category=category,
        keyword=keyword,
        offset=offset,
        limit=limit,
    )


def _app_not_found() -> NotFound:
    return NotFound("no such mini-app in the catalog", code="app_not_found")


async def catalog_item(stores: Stores, appid: str, *, viewer: UUID | None, region: str | None) -> bytes:
    if region is not None:
        check_query(region, None, None, 0, 1)
    snapshot = await CATALOG.current(stores)
    item = snapshot.item(appid, viewer=str(viewer) if viewer is not None else None, region=region)
    if item is None:
        raise _app_not_found()
    return item


def _items_of(snapshot: Snapshot, appids: Iterable[str], viewer: UUID) -> bytes:
    """JSON list of the apps the viewer can see now, in the given order (the others are skipped)."""
    items = [item for appid in appids if (item := snapshot.item(appid, viewer=str(viewer))) is not None]
    return b"[" + b",".join(items) + b"]"


async def record_recent(stores: Stores, account_id: UUID, appid: str) -> None:
    """The citizen opened the app: it goes to the front of their recently used list (50 kept)."""
    snapshot = await CATALOG.current(stores)
    if snapshot.item(appid, viewer=str(account_id)) is None:
        raise _app_not_found()
    async with transaction(stores.pool, stores.settings) as conn:
        await repository.touch_recent(conn, account_id, appid, RECENT_KEEP)
    await analytics.record_visit(stores.redis, appid, account_id)


async def recent(stores: Stores, account_id: UUID) -> bytes:
    async with connection(stores.pool, stores.settings) as conn:
        appids = await repository.recent_of(conn, account_id, RECENT_KEEP)
    return _items_of(await CATALOG.current(stores), appids, account_id)


async def add_favourite(stores: Stores, account_id: UUID, appid: str) -> None:
    """Idempotent; at most FAVOURITES_MAX (409 too_many_favourites)."""
    snapshot = await CATALOG.current(stores)
    if snapshot.item(appid, viewer=str(account_id)) is None:
        raise _app_not_found()
    async with transaction(stores.pool, stores.settings) as conn:
        if await repository.count_favourites(conn, account_id) >= FAVOURITES_MAX:
            # Already there: nothing to add, so not refused.
            if appid in await repository.favourites_of(conn, account_id, FAVOURITES_MAX):
                return
            raise Conflict(f"at most {FAVOURITES_MAX} favourites", code="too_many_favourites")
        await repository.add_favourite(conn, account_id, appid)


async def remove_favourite(stores: Stores, account_id: UUID, appid: str) -> None:
    """Idempotent."""
    async with transaction(stores.pool, stores.settings) as conn:
        await repository.remove_favourite(conn, account_id, appid)


async def favourites(stores: Stores, account_id: UUID) -> bytes:
    async with connection(stores.pool, stores.settings) as conn:
        appids = await repository.favourites_of(conn, account_id, FAVOURITES_MAX)
    return _items_of(await CATALOG.current(stores), appids, account_id)


async def forget_account(stores: Stores, account_id: UUID) -> tuple[int, int]:
    """For account erasure (PIPL art. 47): delete the account's recently used apps and favourites."""
    async with transaction(stores.pool, stores.settings) as conn:
        return await repository.forget_account(conn, account_id)


# --- bulk seeding (bench, demo) ----------------------------------------------------------------------------

_SEED_REGIONS = (
    "150000", "150100", "150102", "150200", "150300", "150400", "150500",
    "150600", "150700", "150800", "150900", "152200", "152500", "152900",
)  # fmt: skip
_SEED_CATEGORIES = ("social_security", "health", "transport", "tax", "housing", "education", "utilities")
_SEED_TOPICS = (
    "社保查询",
    "医保缴费",
    "公积金提取",
    "不动产登记",
    "公交乘车",
    "水电缴费",
    "户籍办理",
    "个税申报",
)


async def seed_catalog(
    stores: Stores,
    *,
    organisation: str,
    apps: int,
    grey_every: int = 50,
    grey_percent: int = 10,
    first_number: int = 0,
) -> int:
    """Published apps for benchmarks and demos, by COPY, owned by `organisation` (made if missing): each
    with a released 1.0.0, and every `grey_every`-th also a 1.1.0 in grey. Packages are not stored.
    App names are unique platform-wide, so seeds for several organisations number from `first_number`.
    Does nothing when the organisation has apps already; returns how many apps it made."""
    async with transaction(stores.pool, stores.settings) as conn:
        org = await repository.organisation_by_name(conn, organisation)
        if org is None:
            org = await repository.insert_organisation(
                conn, ids.new_id(), organisation, "other", "150000", "seed"
            )
        assert org is not None
        if await repository.count_apps_of(conn, org["id"]) > 0:
            return 0
        app_rows: list[tuple[Any, ...]] = []
        version_rows: list[tuple[Any, ...]] = []
        uploader = ids.new_id()
        now = datetime.now(UTC)
        manifest = '{"version": "1.0.0", "pages": ["pages/index"], "min_level": 1}'
        for number in range(first_number, first_number + apps):
            appid = "tb" + secrets.token_hex(8)
            topic = _SEED_TOPICS[number % len(_SEED_TOPICS)]
            app_rows.append(
                (
                    appid,
                    org["id"],
                    f"{topic} {number:05d}",
                    f"{organisation}提供的{topic}服务，在线办理，进度可查。",
                    _SEED_CATEGORIES[number % len(_SEED_CATEGORIES)],
                    _SEED_REGIONS[number % len(_SEED_REGIONS)],
                    f"SEED-{number:06d}",
                    None,
                    secrets.token_bytes(32),
                )
            )
            fake_sha = hashlib.sha256(appid.encode()).hexdigest()
            version_rows.append(
                (ids.new_id(), appid, "1.0.0", manifest, fake_sha, 1, f"packages/{fake_sha[:2]}/{fake_sha}",
                 "released", None, uploader, now)
            )  # fmt: skip
            if grey_every and number % grey_every == 0:
                version_rows.append(
                    (ids.new_id(), appid, "1.1.0", manifest.replace("1.0.0", "1.1.0"), fake_sha, 1,
                     f"packages/{fake_sha[:2]}/{fake_sha}", "grey", grey_percent, uploader, None)
                )  # fmt: skip
        await repository.copy_apps(conn, app_rows)
        await repository.copy_versions(conn, version_rows)
        generation = await repository.bump_catalog_generation(conn)
    await published(stores, generation)
    return apps
