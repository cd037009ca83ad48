"""`tongban validator` against a real server: download the bundle, verify codes offline into a rides file,
upload it in signed batches (twice: the second time everything is a duplicate), and a wrong secret refused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core import db
from core.stores import Stores
from onecode import terminals
from onecode.validator import Bundle
from scripts.validator_cmd import app
from tests.support.onecode_codes import new_key, phone
from tests.support.server import running_server, tongban_env

pytestmark = pytest.mark.e2e
runner = CliRunner()


async def test_a_validator_verifies_offline_then_uploads_its_rides(tmp_path: Path, stores: Stores) -> None:
    async with db.connection(stores.pool, stores.settings) as conn:
        made = await terminals.register(
            conn, stores.settings, kind="validator", name="2路 12号车", owner="沈阳公交"
        )
    terminal = str(made.terminal.id)
    secret = tmp_path / "secret"
    secret.write_text(made.secret + "\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("00" * 32)

    with running_server(tmp_path, tongban_env()) as server:
        auth = ["--server", server.base_url, "--terminal", terminal]
        served = tmp_path / "served.json"
        result = runner.invoke(app, ["bundle", *auth, "--secret-file", str(secret), "--out", str(served)])
        assert result.exit_code == 0, result.output
        assert Bundle.from_json(served.read_bytes()).issuer_keys  # the server's published issuer keys

        # Codes of our own issuer, verified offline against our own bundle file.
        issuer = new_key()
        bundle = tmp_path / "bundle.json"
        bundle.write_bytes(Bundle.of([issuer.public_key()]).to_json())
        rides = tmp_path / "rides.jsonl"
        seen = tmp_path / "seen.json"
        now = time.time()
        texts = [phone(issuer, issued_at=int(now) - 60).make_code(now) for _ in range(3)]
        for text in texts:
            verified = runner.invoke(
                app,
                [
                    "verify",
                    "--bundle",
                    str(bundle),
                    "--seen",
                    str(seen),
                    "--record",
                    str(rides),
                    "--fare",
                    "200",
                    text,
                ],
            )
            assert verified.exit_code == 0, verified.output
        replayed = runner.invoke(app, ["verify", "--bundle", str(bundle), "--seen", str(seen), texts[0]])
        assert replayed.exit_code == 1 and json.loads(replayed.stdout)["reason"] == "replay"
        assert len(rides.read_text().splitlines()) == 3

        upload = ["upload", *auth, "--secret-file", str(secret), "--batch", "2", str(rides)]
        first = runner.invoke(app, upload)
        assert first.exit_code == 0, first.output
        assert "3 rides sent: 3 accepted, 0 already there" in first.output
        again = runner.invoke(app, upload)
        assert again.exit_code == 0 and "0 accepted, 3 already there" in again.output

        refused = runner.invoke(app, ["upload", *auth, "--secret-file", str(wrong), str(rides)])
        assert refused.exit_code == 1 and "terminal_unauthorized" in refused.output

    async with db.connection(stores.pool, stores.settings) as conn:
        stored = await conn.fetch(
            "SELECT ride_id, counter, fare_fen FROM onecode_rides WHERE terminal_id = $1", made.terminal.id
        )
    assert sorted(row["ride_id"] for row in stored) == sorted(
        json.loads(line)["ride_id"] for line in rides.read_text().splitlines()
    )
    assert {row["fare_fen"] for row in stored} == {200}
