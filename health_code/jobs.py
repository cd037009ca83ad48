"""Background jobs of the health capability. Input changes enqueue `health.recompute` through the outbox in
their own transaction; the worker runs it here. Recomputing is idempotent, so at-least-once is enough."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec

from core.jobs import job
from core.stores import Stores

RECOMPUTE_JOB = "health.recompute"
# Accounts per recompute job: one transaction, one bulk read of their inputs.
RECOMPUTE_BATCH = 500


class Recompute(msgspec.Struct, frozen=True, kw_only=True):
    account_ids: Annotated[list[UUID], msgspec.Meta(min_length=1, max_length=RECOMPUTE_BATCH)]


@job(RECOMPUTE_JOB)
async def recompute_job(stores: Stores, payload: Recompute) -> None:
    # Imported here: health_code.status imports this module to enqueue the job.
    from health_code.status import recompute

    await recompute(stores, payload.account_ids)
