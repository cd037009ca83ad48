"""Pure rules of the mini-app registry: grey buckets, GB/T 2260 regions, the state machine table, AppSecret
hashing, IP allowlists and the manifest parser (property-based where it parses input)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InvalidInput
from miniapps import registry
from miniapps.catalog import Grey, grey_bucket, region_contains, region_known, regions_overlap
from miniapps.models import SdkApp
from miniapps.versions import RULES, parse_manifest

# --- grey buckets ------------------------------------------------------------------------------------------


def test_grey_bucket_is_sha256_of_appid_and_account_mod_100() -> None:
    account = uuid.UUID("01930000-0000-7000-8000-000000000001")
    digest = hashlib.sha256(f"tb0123456789abcdef:{account}".encode()).hexdigest()
    assert grey_bucket("tb0123456789abcdef", account) == int(digest, 16) % 100
    assert grey_bucket("tb0123456789abcdef", str(account)) == grey_bucket("tb0123456789abcdef", account)


@given(st.text(min_size=1, max_size=20), st.uuids())
def test_grey_bucket_is_deterministic_and_in_range(appid: str, account: uuid.UUID) -> None:
    bucket = grey_bucket(appid, account)
    assert 0 <= bucket < 100
    assert grey_bucket(appid, account) == bucket


def test_grey_buckets_spread_evenly_and_differ_per_app() -> None:
    accounts = [uuid.uuid4() for _ in range(20_000)]
    counts = Counter(grey_bucket("tbaaaaaaaaaaaaaaaa", account) for account in accounts)
    assert len(counts) == 100 and max(counts.values()) < 300 and min(counts.values()) > 120
    # A citizen in the first 10% of one app is not in the first 10% of every app.
    early = [a for a in accounts if grey_bucket("tbaaaaaaaaaaaaaaaa", a) < 10]
    also_early = [a for a in early if grey_bucket("tbbbbbbbbbbbbbbbbb", a) < 10]
    assert 0.05 < len(also_early) / len(early) < 0.15


def test_grey_admits_by_bucket_account_list_or_region() -> None:
    account = str(uuid.uuid4())
    bucket = grey_bucket("tbcccccccccccccccc", account)
    grey = Grey("tbcccccccccccccccc", bucket + 1 if bucket < 99 else 100, frozenset(), (), b"{}")
    assert grey.admits(account, None)
    closed = Grey("tbcccccccccccccccc", bucket, frozenset(), (), b"{}")
    assert not closed.admits(account, None)
    assert Grey("tbcccccccccccccccc", 0, frozenset({account}), (), b"{}").admits(account, None)
    by_region = Grey("tbcccccccccccccccc", 0, frozenset(), ("152500",), b"{}")
    assert by_region.admits(account, "152502") and by_region.admits(account, "152500")
    assert not by_region.admits(account, "150100") and not by_region.admits(account, None)
    # Percent 0 admits nobody by bucket, whatever the bucket.
    assert not Grey("tbcccccccccccccccc", 0, frozenset(), (), b"{}").admits(account, None)


# --- regions -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "known"),
    [
        ("150000", True),  # 内蒙古自治区
        ("150100", True),  # 呼和浩特市
        ("150102", True),  # 新城区
        ("210102", True),  # 沈阳市和平区
        ("159999", False),
        ("990000", False),
        ("15010", False),
        ("15a102", False),
    ],
)
def test_region_known(code: str, known: bool) -> None:
    assert region_known(code) is known


def test_region_containment_and_overlap() -> None:
    assert region_contains("150000", "150102") and region_contains("150100", "150102")
    assert region_contains("150102", "150102") and not region_contains("150102", "150100")
    assert not region_contains("150100", "150202") and not region_contains("210000", "150102")
    assert regions_overlap("150102", "150000") and regions_overlap("150000", "150102")
    assert not regions_overlap("150102", "150103")


# --- the state machine -------------------------------------------------------------------------------------


def test_state_machine_table() -> None:
    table = {action: (sorted(rule.sources), rule.target, rule.who) for action, rule in RULES.items()}
    assert table == {
        "trial": (["development", "trial"], "trial", "develop"),
        "submit": (["development", "trial"], "submitted", "develop"),
        "withdraw": (["submitted"], "development", "develop"),
        "approve": (["submitted"], "approved", "review"),
        "reject": (["submitted"], "rejected", "review"),
        "grey": (["approved", "grey"], "grey", "operate"),
        "release": (["approved", "grey", "offline"], "released", "operate"),
        "rollback": (["grey", "released"], "rolled_back", "operate"),
        "offline": (["released"], "offline", "operate"),
        "delist": (["approved", "grey", "offline", "released", "superseded"], "delisted", "platform"),
    }
    # Only what can change the catalog bumps its generation.
    assert {action for action, rule in RULES.items() if rule.publishes} == {
        "grey",
        "release",
        "rollback",
        "offline",
        "delist",
    }
    # Final states: nothing leaves them.
    sources = set().union(*(rule.sources for rule in RULES.values()))
    assert {"rejected", "rolled_back", "delisted"} - sources == {"rejected", "rolled_back", "delisted"}


# --- secrets and allowlists --------------------------------------------------------------------------------


def test_app_secrets_are_random_and_hashed_per_app() -> None:
    secrets_made = {registry.new_app_secret() for _ in range(1000)}
    assert len(secrets_made) == 1000 and all(len(s) == 32 and int(s, 16) >= 0 for s in secrets_made)
    secret = registry.new_app_secret()
    stored = registry.hash_secret("tb0000000000000001", secret)
    assert stored == hmac.new(b"tb0000000000000001", secret.encode(), hashlib.sha256).digest()
    # The same secret on another app hashes differently: stored hashes cannot be compared across apps.
    assert registry.hash_secret("tb0000000000000002", secret) != stored
    appid = registry.new_appid()
    assert appid.startswith("tb") and len(appid) == 18 and int(appid[2:], 16) >= 0


def _sdk_app(secret_hash: bytes, allowlist: tuple[str, ...] = ()) -> SdkApp:
    from datetime import UTC, datetime

    return SdkApp(
        appid="tb0000000000000001",
        organisation_id=uuid.uuid4(),
        organisation_name="x",
        status="active",
        secret_hash=secret_hash,
        secret_reset_at=datetime.now(UTC),
        ip_allowlist=allowlist,
    )


def test_secret_matches_only_the_right_secret() -> None:
    secret = registry.new_app_secret()
    app = _sdk_app(registry.hash_secret("tb0000000000000001", secret))
    assert registry.secret_matches(app, secret)
    assert not registry.secret_matches(app, secret.upper()) and not registry.secret_matches(app, "")


def test_allowlist_parsing_and_matching() -> None:
    networks = registry.parse_allowlist(["10.0.0.0/8", " 192.0.2.1 ", "2001:db8::/48", "10.0.0.0/8"], "cidrs")
    assert [str(net) for net in networks] == ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/48"]
    for bad in ("10.0.0.1/8", "300.0.0.1", "example.org", ""):
        with pytest.raises(InvalidInput) as refused:
            registry.parse_allowlist(["10.0.0.0/8", bad], "cidrs")
        assert refused.value.field == "cidrs[1]" and refused.value.code == "invalid_cidr"
    app = _sdk_app(b"", tuple(str(net) for net in networks))
    assert registry.ip_allowed(app, "10.1.2.3") and registry.ip_allowed(app, "2001:db8:0:1::5")
    assert not registry.ip_allowed(app, "192.0.2.2") and not registry.ip_allowed(app, "2001:db9::1")
    assert registry.ip_allowed(_sdk_app(b""), "198.51.100.1")  # no allowlist: any address


# --- the manifest ------------------------------------------------------------------------------------------

GOOD = {"version": "1.2.3", "pages": ["pages/index/index"], "min_level": 2}


def test_a_good_manifest_parses_with_defaults() -> None:
    manifest = parse_manifest(json.dumps(GOOD).encode())
    assert manifest.version == "1.2.3" and manifest.pages == ["pages/index/index"] and manifest.min_level == 2
    assert manifest.permissions == {} and manifest.release_notes == ""


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
manifest_like = st.fixed_dictionaries(
    {},
    optional={
        "version": st.sampled_from(["1.0.0", "1.0", "01.0.0", "x"]) | json_values,
        "pages": st.lists(st.sampled_from(["pages/a", "../b", "", "c/d"]) | json_values, max_size=3),
        "min_level": st.sampled_from([1, 2, 3, 0, 4, "2"]),
        "permissions": st.dictionaries(
            st.sampled_from(["scope.camera", "scope.album", "scope.nope"]),
            st.fixed_dictionaries({}, optional={"desc": st.text(max_size=40) | json_values}),
            max_size=3,
        ),
        "release_notes": st.text(max_size=10) | json_values,
        "extra": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(manifest_like, json_values))
def test_manifest_parser_accepts_or_names_a_manifest_field(document: Any) -> None:
    try:
        manifest = parse_manifest(json.dumps(document).encode())
    except InvalidInput as refused:
        assert refused.code == "invalid_manifest"
        assert refused.field is not None
        assert refused.field == "manifest" or refused.field.startswith(("manifest.", "manifest["))
        assert refused.detail.startswith(refused.field + ":")
        if isinstance(document, dict) and refused.field != "manifest":
            rest = refused.field.removeprefix("manifest")
            # manifest.pages[1], manifest.permissions[scope.camera].desc, or an odd name: manifest[a.b]
            top = rest[1:-1] if rest.startswith("[") else re.split(r"[.\[]", rest[1:])[0]
            assert top in document or top in ("version", "pages")  # a missing required field is named too
    else:
        assert isinstance(document, dict) and manifest.version == document["version"]


@given(st.binary(max_size=200))
def test_manifest_parser_never_fails_otherwise_on_bytes(raw: bytes) -> None:
    try:
        parse_manifest(raw)
    except InvalidInput as refused:
        assert refused.field is not None and refused.field.startswith("manifest")


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"colour": 1}, "manifest.colour"), ({".": 1}, "manifest[.]"), ({"a b": 1}, "manifest[a b]")],
)
def test_unknown_fields_are_named_readably(extra: dict[str, int], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_manifest(json.dumps({**GOOD, **extra}).encode())
    assert refused.value.field == field


def test_oversized_manifest_is_refused() -> None:
    big = json.dumps({**GOOD, "release_notes": "x" * 70_000}).encode()
    with pytest.raises(InvalidInput) as refused:
        parse_manifest(big)
    assert refused.value.field == "manifest"
