"""Settings from TONGBAN_* environment variables, read once per process.

A missing or invalid value stops start-up with one line naming the variable (SettingsError).
"""

from __future__ import annotations

import functools
import os
import re
from typing import Literal

import msgspec

PREFIX = "TONGBAN_"


class SettingsError(Exception):
    """One-line, human-readable configuration error that names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    env: Literal["development", "production"] = "development"
    # Unset: `tongban serve` and the tests start an embedded PostgreSQL / Valkey under data_dir.
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: str = ".tongban"
    # 32 bytes, URL-safe base64. Unset in development: a key file under data_dir is made once.
    master_key: str | None = None
    master_key_file: str | None = None

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    server: Literal["granian", "uvicorn"] = "granian"

    db_pool_min: int = 2
    db_pool_max: int = 10
    db_acquire_timeout: float = 2.0
    db_command_timeout: float = 10.0
    db_connect_attempts: int = 5
    redis_timeout: float = 1.0
    retry_after_seconds: int = 5

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = True
    cors_origins: tuple[str, ...] = ()
    bench_routes: bool = False

    sms_gateway_url: str = "http://127.0.0.1:8101"
    sandbox_host: str = "127.0.0.1"
    sandbox_sms_port: int = 8101

    # key store
    # How long a process trusts its cached signing and public keys: a rotation reaches every worker within this.
    key_cache_seconds: float = 30.0
    # An unknown kid reloads a purpose's keys at most once per this many seconds per process.
    key_unknown_kid_seconds: float = 1.0
    # Retired public keys stay in the JWKS (and verify) this long after retirement.
    key_retired_publish_days: float = 7.0

    # pii vault
    # sm4-gcm (GB/T 39786) switches new values, new data keys and their wrapping to SM4; old values keep
    # decrypting. "auto" blind index follows the cipher (HMAC-SM3 with sm4-gcm); changing it on a populated
    # database means recomputing every stored blind index, so pin it when switching the cipher later.
    pii_cipher: Literal["aes-256-gcm", "sm4-gcm"] = "aes-256-gcm"
    pii_blind_index: Literal["auto", "hmac-sha256", "hmac-sm3"] = "auto"
    pii_key_cache_seconds: float = 300.0

    # sandbox
    # The registered signature (签名) sent with every SMS and the whole-request timeout of a gateway call.
    sms_sign: str = "通办"
    sms_timeout: float = 3.0

    # jobs
    # A failing job is tried this many times, waiting retry_delay, then twice that, ... up to retry_max_delay.
    jobs_max_tries: int = 5
    jobs_retry_delay: float = 2.0
    jobs_retry_max_delay: float = 300.0
    jobs_timeout: float = 300.0
    jobs_concurrency: int = 10
    # The relay wakes on NOTIFY; the poll is the fallback when a notification is missed.
    jobs_relay_batch: int = 100
    jobs_relay_poll: float = 1.0
    # Relayed outbox rows are kept this long (a duplicate job_id within it is ignored), then deleted.
    jobs_outbox_keep_days: float = 7.0

    # accounts
    # Access tokens live minutes; sessions (and their refresh tokens) at most auth_session_days.
    auth_access_ttl: int = 600
    auth_session_days: float = 30.0
    auth_refresh_idle_days: float = 14.0
    # A refresh token used again within this many seconds of its rotation is refused without revoking the
    # session (two requests of one app racing); later reuse means theft and revokes the whole session.
    auth_refresh_grace_seconds: float = 10.0
    auth_otp_ttl: int = 300
    # SMS sends per phone (1/min, 5/h, 10/day), per IP and per device.
    auth_sms_per_phone_minute: int = 1
    auth_sms_per_phone_hour: int = 5
    auth_sms_per_phone_day: int = 10
    auth_sms_per_ip_hour: int = 30
    auth_sms_per_device_hour: int = 10
    # Login attempts per IP per minute (code guessing across many phones).
    auth_login_per_ip_minute: int = 30
    # L3: minimum liveness/face-match score from the face-check provider.
    auth_face_threshold: float = 0.8

    # real-name providers
    # The population registry (name + ID number match) and the face-check provider (liveness + match).
    population_registry_url: str = "http://127.0.0.1:8102"
    sandbox_population_port: int = 8102
    face_check_url: str = "http://127.0.0.1:8104"
    sandbox_face_port: int = 8104
    # Whole-request timeout of one provider call (a face image upload included).
    realname_provider_timeout: float = 5.0
    # Attempts per account per hour: each one may cost a paid registry or face-check query.
    auth_realname_per_hour: int = 5
    auth_face_per_hour: int = 5
    # Largest face image accepted, in bytes once base64-decoded.
    auth_face_image_max_bytes: int = 2 * 1024 * 1024
    # PIPL rights: personal-data exports per account per hour (art. 45), and the days a deletion request
    # (art. 47) waits, cancellable, before the account is erased.
    auth_export_per_hour: int = 5
    auth_deletion_grace_days: float = 15.0

    # enterprise registry
    # The registry of legal persons (the sandbox one by default) and the whole-request timeout of a lookup.
    enterprise_registry_url: str = "http://127.0.0.1:8103"
    sandbox_enterprise_port: int = 8103
    enterprise_registry_timeout: float = 3.0

    # mini-app registry
    # Largest mini-app package accepted at upload, in bytes (WeChat allows 20 MiB for a whole package).
    miniapp_package_max_bytes: int = 20 * 1024 * 1024
    # Where the filesystem blob storage keeps packages; unset: <data_dir>/blobs.
    miniapp_blob_dir: str | None = None
    # Each API process reads the catalog generation this often and reloads its in-memory catalog when it
    # moved: the fallback for a missed publish notification (Redis away).
    miniapp_catalog_poll_seconds: float = 2.0
    # How long a process trusts the staff roles it read: a revoke reaches every process within this.
    staff_cache_seconds: float = 5.0

    # mini-app ratings (好差评)
    # Official holidays and make-up working days (调休) for rectification deadlines: a file of
    # "YYYY-MM-DD holiday" / "YYYY-MM-DD workday" lines. Unset: only Saturdays and Sundays are days off.
    miniapp_holidays_file: str | None = None
    # Ratings one citizen may give per hour: each bad one opens a case its organisation must answer.
    miniapp_ratings_per_hour: int = 20

    # health pass
    # The issuing province (ISO 3166-2): the passes' iss claim, our certificates' and trust list's issuer.
    health_pass_province: str = "CN-LN"  # noqa: S105 (a province code, not a password)
    # How long a pass is valid; it is signed again this long before it expires (a shown pass always has
    # at least this much left). Offline checkpoints may accept a pass until its exp, whatever changed.
    health_pass_ttl_seconds: int = 24 * 3600
    health_pass_refresh_seconds: int = 3600
    # Validity of a document-signer certificate (`tongban health signer rotate` well before it ends).
    health_pass_signer_days: int = 365
    # API processes look for status changes and trust imports this often (the fallback for a missed
    # "health:status" message; also how fast online verification learns a revocation without one).
    health_pass_poll_seconds: float = 2.0
    # A new trust list (GET /v1/trust-list) is signed at most this often.
    health_trust_list_seconds: float = 60.0

    # one-code providers
    # The transit operator, the medical-insurance platform (医保信息平台) and the payment acquirer (the
    # sandbox ones by default). Online resolve waits on them, so one call gets at most this many seconds in
    # all: a slow provider fails fast as 503 with Retry-After (connecting gets at most half a second).
    transit_operator_url: str = "http://127.0.0.1:8105"
    sandbox_transit_port: int = 8105
    medical_insurance_url: str = "http://127.0.0.1:8106"
    sandbox_medical_port: int = 8106
    payment_acquirer_url: str = "http://127.0.0.1:8107"
    sandbox_acquirer_port: int = 8107
    onecode_provider_timeout: float = 2.0

    # one-code (citizen side: links, device keys, authorisations, ledger)
    # How long an authorisation lasts (the code format allows at most 24 h); the app asks for a new one before.
    onecode_authorisation_seconds: int = 24 * 3600
    # The per-ride cap an authorisation carries for transit, in fen: an offline validator refuses a higher fare.
    onecode_ride_cap_fen: int = 1000
    # Device keys one account may have active at once (a phone, a tablet, a watch).
    onecode_max_devices: int = 3
    # Every hour each provider's statements of the last this many days (yesterday back) are reconciled
    # against the ledger, unless a run for that day already finished.
    onecode_reconcile_days: int = 3

    # one-code terminals (validators, hospital counters, POS)
    # A signed terminal request is accepted this many seconds either side of the server's clock; its nonce
    # is remembered (Redis) for twice as long.
    onecode_terminal_skew_seconds: int = 90
    # How long a process trusts a terminal row it read (secret, status): disabling reaches every process
    # within this.
    onecode_terminal_cache_seconds: float = 10.0
    # Rides per `POST /v1/terminals/rides` at most.
    onecode_rides_batch_max: int = 5000
    # A process rebuilds the bundle (issuer keys and revoked code ids) it verifies with, and serves to
    # terminals, at most this often.
    onecode_bundle_seconds: float = 5.0


_FIELD_RE = re.compile(r"at `\$\.(\w+)`")


def _from_environ(environ: dict[str, str]) -> Settings:
    raw: dict[str, object] = {}
    names = set(Settings.__struct_fields__)
    for key, value in environ.items():
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX) :].lower()
        if name not in names:
            continue
        if name == "cors_origins":
            raw[name] = [v.strip() for v in value.split(",") if v.strip()]
        elif name in ("log_json", "bench_routes"):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise SettingsError(f"{key}: expected true or false, got {value!r}")
            raw[name] = value.lower() in ("1", "true", "yes")
        else:
            raw[name] = value
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        match = _FIELD_RE.search(str(exc))
        field = (PREFIX + match.group(1).upper()) if match else "TONGBAN_*"
        reason = str(exc).split(" - at ")[0]
        raise SettingsError(f"{field}: {reason}") from None
    if settings.env == "production":
        for name in ("database_url", "redis_url"):
            if getattr(settings, name) is None:
                raise SettingsError(f"{PREFIX}{name.upper()}: required when TONGBAN_ENV=production")
        if settings.master_key is None and settings.master_key_file is None:
            raise SettingsError("TONGBAN_MASTER_KEY: required (or TONGBAN_MASTER_KEY_FILE) in production")
    if settings.db_pool_min > settings.db_pool_max:
        raise SettingsError("TONGBAN_DB_POOL_MIN: must not exceed TONGBAN_DB_POOL_MAX")
    if not re.fullmatch(r"[A-Z]{2}-[A-Z0-9]{1,3}", settings.health_pass_province):
        raise SettingsError("TONGBAN_HEALTH_PASS_PROVINCE: an ISO 3166-2 code such as CN-LN")
    if not 0 < settings.health_pass_refresh_seconds < settings.health_pass_ttl_seconds:
        raise SettingsError(
            "TONGBAN_HEALTH_PASS_REFRESH_SECONDS: above 0 and below TONGBAN_HEALTH_PASS_TTL_SECONDS"
        )
    if not 60 <= settings.onecode_authorisation_seconds <= 24 * 3600:
        raise SettingsError("TONGBAN_ONECODE_AUTHORISATION_SECONDS: between 60 and 86400 (24 h)")
    if not 0 <= settings.onecode_ride_cap_fen <= 0xFFFFFFFF:
        raise SettingsError("TONGBAN_ONECODE_RIDE_CAP_FEN: between 0 and 4294967295")
    if settings.onecode_max_devices < 1 or settings.onecode_reconcile_days < 1:
        raise SettingsError("TONGBAN_ONECODE_MAX_DEVICES and TONGBAN_ONECODE_RECONCILE_DAYS: at least 1")
    return settings


@functools.cache
def get_settings() -> Settings:
    """The process's settings; tests call get_settings.cache_clear() after changing the environment."""
    return _from_environ(dict(os.environ))


def load_settings(environ: dict[str, str]) -> Settings:
    """Parse an explicit environment (used by tests and by the CLI before spawning workers)."""
    return _from_environ(environ)
