"""`tongban validator verify`: the verdict as JSON and the exit code, the seen-set file between runs, the rides
file, CPM input, and the usage errors (the upload against a real server is in tests/e2e)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onecode import codec, emv
from onecode.validator import Bundle
from scripts.validator_cmd import app, parse_time
from tests.support.onecode_codes import NOW, new_key, phone

ISSUER = new_key()
runner = CliRunner()


@pytest.fixture
def bundle_file(tmp_path: Path) -> Path:
    path = tmp_path / "bundle.json"
    path.write_bytes(
        Bundle.of([ISSUER.public_key()], generated_at=datetime.fromtimestamp(NOW - 600, UTC)).to_json()
    )
    return path


def run(*args: str) -> tuple[int, dict[str, object] | None, str]:
    result = runner.invoke(app, ["verify", *args])
    try:
        document = json.loads(result.stdout)
    except ValueError:
        document = None
    return result.exit_code, document, result.output


def test_a_valid_code_prints_ok_and_exits_0_a_replay_exits_1(bundle_file: Path, tmp_path: Path) -> None:
    client = phone(ISSUER, ride_cap_fen=400)
    text = client.make_code(NOW)
    seen, rides = tmp_path / "seen.json", tmp_path / "rides.jsonl"
    common = ["--bundle", str(bundle_file), "--at", str(NOW + 3), "--seen", str(seen), "--record", str(rides)]
    code, verdict, _ = run(*common, "--fare", "200", text)
    assert code == 0 and verdict is not None
    assert verdict["valid"] is True and verdict["reason"] == "ok"
    assert verdict["code_id"] == client.code_id.hex() and verdict["counter"] == 1
    assert verdict["scenes"] == ["transit", "medical", "payment"] and verdict["ride_cap_fen"] == 400
    assert verdict["bundle_age_seconds"] == 603
    assert "medical_handle" not in verdict and "payment_handle" not in verdict
    # A second run (a new process, as on a validator) remembers the code through the seen file.
    code, verdict, _ = run(*common, "--fare", "200", text)
    assert code == 1 and verdict is not None and verdict["reason"] == "replay"
    code, verdict, _ = run(*common, "--fare", "200", client.make_code(NOW + 1))
    assert code == 0
    lines = [json.loads(line) for line in rides.read_text().splitlines()]
    assert [ride["counter"] for ride in lines] == [1, 2]
    assert lines[0] == {
        "ride_id": f"{client.code_id.hex()}.1",
        "code_id": client.code_id.hex(),
        "counter": 1,
        "generated_at": "2026-01-01T00:00:00Z",
        "ridden_at": "2026-01-01T00:00:03Z",
        "fare_fen": 200,
    }
    stored = json.loads(seen.read_text())
    assert stored["format"] == "tongban-validator-seen/1" and len(stored["entries"]) == 2


def test_refusals_print_their_reason(bundle_file: Path) -> None:
    text = phone(ISSUER, ride_cap_fen=100).make_code(NOW)
    at = ["--bundle", str(bundle_file), "--at", str(NOW)]
    code, verdict, _ = run(*at, "--fare", "101", text)
    assert code == 1 and verdict is not None and verdict["reason"] == "over_cap"
    assert run(*at, "--scene", "medical", "TBO1:000")[1]["reason"] == "bad_length"  # type: ignore[index]
    late = ["--bundle", str(bundle_file), "--at", "2026-01-01T08:05:00+08:00"]
    assert run(*late, text)[1]["reason"] == "stale"  # type: ignore[index]
    stranger = phone(new_key()).make_code(NOW)
    code, verdict, _ = run(*at, stranger)
    assert code == 1 and verdict is not None and verdict["reason"] == "unknown_issuer"


def test_a_cpm_text_is_verified_by_the_code_inside(bundle_file: Path) -> None:
    cpm = emv.encode_cpm(phone(ISSUER).make_code(NOW))
    code, verdict, _ = run("--bundle", str(bundle_file), "--at", str(NOW), "--scene", "payment", cpm)
    assert code == 0 and verdict is not None and verdict["valid"] is True


def test_the_code_can_come_from_stdin(bundle_file: Path) -> None:
    text = phone(ISSUER).make_code(NOW)
    result = runner.invoke(
        app, ["verify", "--bundle", str(bundle_file), "--at", str(NOW), "-"], input=text + "\n"
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["reason"] == "ok"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scene", "bus"], "--scene"),
        (["--record", "rides.jsonl"], "--record"),  # no --fare
        (["--at", "yesterday"], "--at"),
        (["--at", "2026-01-01T00:00:00"], "UTC offset"),
        (["--max-bundle-age", "300"], "download a new one"),
    ],
)
def test_usage_errors_exit_2(bundle_file: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["verify", "--bundle", str(bundle_file), "--at", str(NOW), *args, "TBO1:"])
    assert result.exit_code == 2 and message in result.output


def test_a_bundle_or_seen_file_that_is_not_one_exits_2(bundle_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    result = runner.invoke(app, ["verify", "--bundle", str(broken), "TBO1:"])
    assert result.exit_code == 2 and "bundle" in result.output
    result = runner.invoke(app, ["verify", "--bundle", str(tmp_path / "missing.json"), "TBO1:"])
    assert result.exit_code == 2
    result = runner.invoke(
        app, ["verify", "--bundle", str(bundle_file), "--at", str(NOW), "--seen", str(broken), "TBO1:"]
    )
    assert result.exit_code == 2 and "seen-set" in result.output


def test_times_are_unix_seconds_or_rfc3339() -> None:
    assert parse_time("1767225600") == NOW
    assert parse_time("2026-01-01T08:00:00+08:00") == NOW
    assert parse_time("2026-01-01T00:00:00Z") == NOW
    assert codec.SCENE_NAMES["transit"] == codec.SCENE_TRANSIT
