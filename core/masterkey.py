"""The master key that wraps every other key at rest (signing keys, PII data keys).

Sources, in order: TONGBAN_MASTER_KEY (URL-safe base64 of 32 bytes), TONGBAN_MASTER_KEY_FILE, and in
development only a key file made once under the data dir. A keyring may hold older keys for unwrapping
during rotation: in the variable, comma-separated; in the file, one per line; the first is current.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings, SettingsError


@dataclass(frozen=True, slots=True)
class MasterKeyring:
    current_id: str
    keys: dict[str, bytes]

    @property
    def current(self) -> bytes:
        return self.keys[self.current_id]

    def get(self, key_id: str) -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            raise SettingsError(f"TONGBAN_MASTER_KEY: master key {key_id} is not in the keyring") from None


def key_id(key: bytes) -> str:
    """A public name for a master key: the first 8 bytes of SHA-256 over it, hex."""
    return hashlib.sha256(b"tongban-master-key-id" + key).hexdigest()[:16]


def _decode(text: str, variable: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except ValueError:
        raise SettingsError(f"{variable}: not valid base64") from None
    if len(key) != 32:
        raise SettingsError(f"{variable}: must decode to 32 bytes, got {len(key)}")
    return key


def new_key_text() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def _ring(texts: list[str], variable: str) -> MasterKeyring:
    keys = [_decode(t, variable) for t in texts if t.strip()]
    if not keys:
        raise SettingsError(f"{variable}: empty")
    ring = {key_id(k): k for k in keys}
    return MasterKeyring(current_id=key_id(keys[0]), keys=ring)


@functools.cache
def _load(master_key: str | None, master_key_file: str | None, env: str, data_dir: str) -> MasterKeyring:
    if master_key:
        return _ring(master_key.split(","), "TONGBAN_MASTER_KEY")
    path = Path(master_key_file) if master_key_file else None
    if path is None:
        if env == "production":
            raise SettingsError("TONGBAN_MASTER_KEY: required (or TONGBAN_MASTER_KEY_FILE) in production")
        path = Path(data_dir) / "master.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(new_key_text() + "\n")
    elif not path.exists() and env != "production":
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(new_key_text() + "\n")
        except FileExistsError:
            pass
    try:
        lines = path.read_text().splitlines()
    except OSError:
        raise SettingsError(f"TONGBAN_MASTER_KEY_FILE: cannot read {path.name}") from None
    return _ring(lines, "TONGBAN_MASTER_KEY_FILE")


def master_keyring(settings: Settings) -> MasterKeyring:
    return _load(settings.master_key, settings.master_key_file, settings.env, settings.data_dir)


@functools.cache
def _derive(master: bytes, label: str, length: int) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label.encode()).derive(master)


def derived_key(settings: Settings, label: str, length: int = 32) -> bytes:
    """A key for one narrow use (e.g. "otp-mac"), derived from the current master key with HKDF-SHA256.
    Only for short-lived secrets: a master-key change changes it."""
    return _derive(master_keyring(settings).current, label, length)
