"""好差评 ratings and rectification cases, and visit statistics: citizens rate a mini-app's transactions;
members of the app's organisation answer cases and read the statistics."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Request, Router, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED

from api.deps import StoresDep
from api.guards import citizen, citizen_level, claims_of
from miniapps import analytics, ratings
from miniapps.models import Actor
from miniapps.ratings import AnswerCase, CaseStatus, CaseView, RateTransaction, RatingStats, RatingView


@post(
    "/miniapps/{appid:str}/ratings",
    guards=[citizen],
    status_code=HTTP_201_CREATED,
    summary="Rate one service transaction of a mini-app (好差评)",
)
async def rate(
    request: Request[Any, Any, Any], appid: FromPath[str], data: JSONBody[RateTransaction], stores: StoresDep
) -> RatingView:
    """`level`: 非常满意, 满意, 基本满意, 不满意 or 非常不满意. One rating per `transaction_id` (409
    `already_rated`). 不满意 and 非常不满意 need a `comment` (422 `comment_required`) and open a case the
    organisation answers within 15 working days (`case_id`, `case_due_on`); the answer arrives in the
    citizen's messages."""
    return await ratings.rate(stores, claims_of(request).account_id, appid, data)


@get(
    "/miniapps/{appid:str}/ratings/stats",
    guards=[citizen_level(2)],
    summary="The app's ratings per level, satisfaction rate and cases (members)",
)
async def rating_stats(
    request: Request[Any, Any, Any], appid: FromPath[str], stores: StoresDep
) -> RatingStats:
    """`satisfaction_rate`: (非常满意 + 满意 + 基本满意) / all ratings, null without ratings."""
    return await ratings.member_stats(stores, claims_of(request).account_id, appid)


@get(
    "/miniapps/{appid:str}/cases",
    guards=[citizen_level(2)],
    summary="The app's rectification cases, newest first (members)",
)
async def app_cases(
    request: Request[Any, Any, Any],
    appid: FromPath[str],
    stores: StoresDep,
    status: FromQuery[CaseStatus | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=ratings.MAX_CASES)] = 200,
) -> list[CaseView]:
    return await ratings.app_cases(stores, claims_of(request).account_id, appid, status=status, limit=limit)


@post(
    "/miniapps/cases/{case_id:uuid}/answer",
    guards=[citizen_level(2)],
    status_code=200,
    summary="Answer a rectification case (members of the app's organisation)",
)
async def answer_case(
    request: Request[Any, Any, Any], case_id: FromPath[UUID], data: JSONBody[AnswerCase], stores: StoresDep
) -> CaseView:
    """Once (409 `case_answered`); an answer after the due day is taken and marked `answered_late`."""
    return await ratings.answer_case(stores, Actor.of_account(claims_of(request).account_id), case_id, data)


@get(
    "/miniapps/{appid:str}/visits",
    guards=[citizen_level(2)],
    summary="The app's visits and unique users per day (members)",
)
async def app_visits(
    request: Request[Any, Any, Any],
    appid: FromPath[str],
    stores: StoresDep,
    days: Annotated[int, QueryParameter(ge=1, le=analytics.MAX_DAYS)] = 14,
) -> analytics.VisitStats:
    """The last `days` days including today, newest first; today's counts lag by up to five minutes."""
    return await analytics.member_visits(stores, claims_of(request).account_id, appid, days)


router = Router(
    path="/v1",
    route_handlers=[rate, rating_stats, app_cases, answer_case, app_visits],
    tags=["ratings"],
)
