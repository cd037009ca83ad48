"""Background jobs of the one-code terminals: charging ride fares through the transit operator.

An upload (or an online validator's ride) enqueues `onecode.settle_rides` through the outbox in its own
transaction. The job charges each pending ride (idempotent by the ride's reference at the operator, by the
operator's reference in the ledger), so running it twice is harmless. While the operator is unavailable
the job fails and is retried with backoff; rides still pending after all its tries are picked up by the
periodic sweep `onecode.settle_pending`: an accepted ride is never lost.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Final

import msgspec
import structlog

from core import clock
from core.errors import ProviderUnavailable
from core.jobs import job, periodic
from core.stores import Stores

log = structlog.get_logger(__name__)

SETTLE_RIDES: Final = "onecode.settle_rides"
SETTLE_PENDING: Final = "onecode.settle_pending"
# Ride ids per settlement job: an upload's new rides at most (onecode_rides_batch_max is below this).
SETTLE_BATCH: Final = 10_000
# The sweep leaves younger pending rides to the job their upload enqueued.
SWEEP_AFTER: Final = timedelta(minutes=10)
SWEEP_BATCH: Final = 2000


class SettleRides(msgspec.Struct, frozen=True, kw_only=True):
    ride_ids: Annotated[list[int], msgspec.Meta(min_length=1, max_length=SETTLE_BATCH)]


@job(SETTLE_RIDES)
async def settle_rides_job(stores: Stores, payload: SettleRides) -> None:
    from onecode.rides import settle  # rides imports this module to enqueue the job

    outcome = await settle(stores, payload.ride_ids)
    if outcome.waiting:
        # Raising makes the queue try again later; the rides settled meanwhile are skipped then.
        raise ProviderUnavailable("transit operator", stores.settings.retry_after_seconds)


@periodic(SETTLE_PENDING, every_seconds=300)
async def settle_pending(stores: Stores) -> None:
    """Rides still pending long after their upload (their job gave up during a long outage)."""
    from onecode.rides import pending_before, settle

    before = clock.now() - SWEEP_AFTER
    while ids := await pending_before(stores, before, SWEEP_BATCH):
        outcome = await settle(stores, ids)
        log.info("onecode.sweep", settled=outcome.settled, failed=outcome.failed, waiting=outcome.waiting)
        if outcome.waiting:
            return  # the operator is still away: the next tick tries again
