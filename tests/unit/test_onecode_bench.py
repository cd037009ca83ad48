"""bench/verify_onecode.py runs on a few codes and writes its table (the real run is `python -m
bench.verify_onecode`)."""

from __future__ import annotations

from pathlib import Path

from bench import verify_onecode


def test_the_onecode_bench_measures_every_row_and_writes_the_table(tmp_path: Path) -> None:
    rows = verify_onecode.measure(codes=5, sweeps=3)
    assert [row.key for row in rows] == ["raw", "raw_key", "floor", "onecode", "repeat"]
    for row in rows:
        assert row.calls_per_s > 0 and abs(row.us_per_call * row.calls_per_s - 1e6) < 1
        assert (row.ratio is None) == (row.key == "raw")
    path = verify_onecode.write_report(rows, 5, 3, directory=tmp_path)
    text = path.read_text(encoding="utf-8")
    assert path == tmp_path / "verify_onecode.md"
    for row in rows:
        assert f"| {row.name} | {row.calls_per_s:,.0f} |" in text
    new_rider = next(row for row in rows if row.key == "onecode")
    assert new_rider.ratio is not None
    assert f"New rider: {new_rider.ratio:.2f}x ({'met' if new_rider.ratio >= 0.8 else 'not met'})" in text
