"""bench/verify_offline.py runs on a few passes and writes its table (the real run is `python -m
bench.verify_offline`)."""

from __future__ import annotations

from pathlib import Path

from bench import verify_offline


def test_the_offline_bench_measures_every_row_and_writes_the_table(tmp_path: Path) -> None:
    rows = verify_offline.measure(passes=5, sweeps=3)
    assert [row.key for row in rows] == ["raw", "floor", "tongban", "eu"]
    for row in rows:
        assert row.calls_per_s > 0 and abs(row.us_per_call * row.calls_per_s - 1e6) < 1
        assert (row.ratio is None) == (row.key == "raw")
    assert all(row.ratio is not None and row.ratio > 0 for row in rows[1:])
    path = verify_offline.write_report(
        rows, 5, 3, {"tongban": "310-315", "eu": "505-510"}, directory=tmp_path
    )
    text = path.read_text(encoding="utf-8")
    assert path == tmp_path / "verify_offline.md"
    for row in rows:
        assert f"| {row.name} | {row.calls_per_s:,.0f} |" in text
    tongban = next(row for row in rows if row.key == "tongban")
    assert tongban.ratio is not None
    assert f"TB1: {tongban.ratio:.2f}x ({'met' if tongban.ratio >= 0.8 else 'not met'})" in text
