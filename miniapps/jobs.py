"""Background jobs of the mini-apps capability, run by `tongban worker` (scripts/worker.py JOB_MODULES)."""

from __future__ import annotations

from core.jobs import periodic
from core.stores import Stores
from miniapps import analytics

ROLLUP_JOB = "miniapps.rollup_visits"
# How stale today's rolled-up visits may be; the job is cheap (two Redis reads per app, pipelined).
ROLLUP_EVERY_SECONDS = 300


@periodic(ROLLUP_JOB, every_seconds=ROLLUP_EVERY_SECONDS)
async def rollup_visits(stores: Stores) -> None:
    """Today and yesterday from Redis into miniapp_daily_visits; idempotent, so a missed or doubled tick
    does no harm (yesterday is rolled up again through the first ticks after midnight)."""
    await analytics.rollup_recent(stores)
