"""Properties of rule evaluation, over the shipped rules and over generated valid rule files: it is
deterministic, evidence never makes a colour greener, what clears evidence never makes it redder, and the
answer holds unchanged until the `until` it gives."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from health_code.rules import (
    SEVERITY,
    AppealDecision,
    Inputs,
    LabResult,
    Mark,
    RiskArea,
    RuleSet,
    Trip,
    Vaccination,
    default_rules,
    evaluate,
    rules_from_document,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DAY = 24 * 60
REGIONS = ["210102", "210202", "220102", "110105"]
AREA_CODES = ["210000", "210100", "210102", "210200", "220100", "110105"]
REASONS = ["reason_0", "reason_1", "reason_2"]
APPEAL_REASONS = [None, *REASONS, "positive_test", "high_risk_trip", "manual_red"]


def at(minutes: int) -> datetime:
    return NOW + timedelta(minutes=minutes)


past = st.integers(min_value=-30 * DAY, max_value=0)
trips = st.builds(lambda region, m: Trip(region=region, at=at(m)), st.sampled_from(REGIONS), past)
areas = st.builds(
    lambda code, level, start, length: RiskArea(
        region=code,
        level=level,
        valid_from=at(start),
        valid_to=None if length is None else at(start + length),
    ),
    st.sampled_from(AREA_CODES),
    st.sampled_from(["low", "medium", "high", "high"]),
    st.integers(min_value=-35 * DAY, max_value=DAY),
    st.none() | st.integers(min_value=1, max_value=30 * DAY),
)
positives = st.builds(lambda m: LabResult(result="positive", sampled_at=at(m)), past)
negatives = st.builds(lambda m: LabResult(result="negative", sampled_at=at(m)), past)
doses = st.builds(
    lambda dose, m: Vaccination(dose=dose, at=at(m)),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=-30 * DAY, max_value=0),
)


def marks_of(colours: list[str]) -> st.SearchStrategy[Mark]:
    return st.builds(
        lambda colour, m, cleared: Mark(
            colour=colour, at=at(m), cleared_at=None if cleared is None else at(m + cleared)
        ),
        st.sampled_from(colours),
        past,
        st.none() | st.integers(min_value=1, max_value=40 * DAY),
    )


approvals = st.builds(
    lambda m, reason: AppealDecision(decision="approved", at=at(m), reason_code=reason),
    past,
    st.sampled_from(APPEAL_REASONS),
)
rejections = st.builds(lambda m: AppealDecision(decision="rejected", at=at(m)), past)

# A trip with an area that covers it (random trips and areas seldom meet), so trip rules really hold.
exposures = st.builds(
    lambda code, level, m, before, after: (
        Trip(region="210102", at=at(m)),
        RiskArea(
            region=code,
            level=level,
            valid_from=at(m - before),
            valid_to=None if after is None else at(m + after),
        ),
    ),
    st.sampled_from(["210000", "210100", "210102"]),
    st.sampled_from(["medium", "high"]),
    st.integers(min_value=-20 * DAY, max_value=0),
    st.integers(min_value=0, max_value=5 * DAY),
    st.none() | st.integers(min_value=1, max_value=5 * DAY),
)


@st.composite
def inputs(draw: st.DrawFn) -> Inputs:
    met = draw(st.lists(exposures, max_size=2))
    return Inputs(
        trips=draw(st.lists(trips, max_size=3)) + [trip for trip, _ in met],
        risk_areas=draw(st.lists(areas, max_size=3)) + [area for _, area in met],
        tests=draw(st.lists(positives | negatives, max_size=4)),
        vaccinations=draw(st.lists(doses, max_size=3)),
        marks=draw(st.lists(marks_of(["green", "yellow", "red"]), max_size=3)),
        appeals=draw(st.lists(approvals | rejections, max_size=2)),
    )


durations = st.sampled_from(["30m", "12h", "1d", "3d", "7d", "14d"])


def conditions(colour: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda w: {"kind": "positive_test", "within": w}, durations),
        st.builds(
            lambda levels, w: {"kind": "risk_trip", "levels": levels, "within": w},
            st.lists(st.sampled_from(["low", "medium", "high"]), min_size=1, max_size=3, unique=True),
            durations,
        ),
        st.just({"kind": "manual_mark", "colour": colour}),
        st.builds(
            lambda n, e: {"kind": "doses_below", "doses": n, "effective_after": e},
            st.integers(min_value=1, max_value=3),
            durations,
        ),
    )


@st.composite
def rule_sets(draw: st.DrawFn) -> RuleSet:
    count = draw(st.integers(min_value=1, max_value=5))
    colours = sorted(
        draw(st.lists(st.sampled_from(["green", "yellow", "red"]), min_size=count, max_size=count)),
        key=SEVERITY.__getitem__,
        reverse=True,
    )
    rules = [
        {
            "id": f"rule_{number}",
            "colour": colour,
            "reason": draw(st.sampled_from(REASONS)),
            "when": draw(st.lists(conditions(colour), min_size=1, max_size=3)),
            "cleared_by": draw(
                st.lists(st.sampled_from(["negative_test", "appeal", "manual_green"]), unique=True)
            ),
        }
        for number, colour in enumerate(colours)
    ]
    return rules_from_document(
        {"version": "generated-1", "default": {"colour": "green", "reason": "no_risk"}, "rules": rules}
    )


any_rules = st.just(default_rules()) | rule_sets()


def severity(rules: RuleSet, given: Inputs) -> int:
    return SEVERITY[evaluate(rules, given, NOW).colour]


def plus(given: Inputs, **more: list[Any]) -> Inputs:
    fields = {name: list(getattr(given, name)) for name in given.__struct_fields__}
    for name, items in more.items():
        fields[name] += items
    return Inputs(**fields)


@settings(max_examples=300, deadline=None)
@given(any_rules, inputs(), st.randoms(use_true_random=False))
def test_evaluation_is_deterministic_whatever_the_order_of_inputs(
    rules: RuleSet, given: Inputs, rnd: random.Random
) -> None:
    shuffled = {
        name: rnd.sample(list(getattr(given, name)), len(getattr(given, name)))
        for name in given.__struct_fields__
    }
    first = evaluate(rules, given, NOW)
    assert evaluate(rules, Inputs(**shuffled), NOW) == first
    assert evaluate(rules, given, NOW) == first
    assert (first.rule_id is None) == (first.reasons == (rules.default_reason,))


@settings(max_examples=300, deadline=None)
@given(
    any_rules,
    inputs(),
    st.one_of(
        positives.map(lambda x: {"tests": [x]}),
        trips.map(lambda x: {"trips": [x]}),
        areas.map(lambda x: {"risk_areas": [x]}),
        marks_of(["yellow", "red"]).map(lambda x: {"marks": [x]}),
        rejections.map(lambda x: {"appeals": [x]}),
    ),
)
def test_evidence_never_makes_a_colour_greener(
    rules: RuleSet, given: Inputs, extra: dict[str, list[Any]]
) -> None:
    assert severity(rules, plus(given, **extra)) >= severity(rules, given)


@settings(max_examples=300, deadline=None)
@given(
    any_rules,
    inputs(),
    st.one_of(
        negatives.map(lambda x: {"tests": [x]}),
        approvals.map(lambda x: {"appeals": [x]}),
        doses.map(lambda x: {"vaccinations": [x]}),
        marks_of(["green"]).map(lambda x: {"marks": [x]}),
    ),
)
def test_what_clears_evidence_never_makes_a_colour_redder(
    rules: RuleSet, given: Inputs, extra: dict[str, list[Any]]
) -> None:
    assert severity(rules, plus(given, **extra)) <= severity(rules, given)


@settings(max_examples=300, deadline=None)
@given(any_rules, inputs(), st.integers(min_value=0, max_value=999_999))
def test_the_answer_holds_until_the_until_it_gives(rules: RuleSet, given: Inputs, millionths: int) -> None:
    first = evaluate(rules, given, NOW)
    horizon = first.until if first.until is not None else NOW + timedelta(days=60)
    assert horizon > NOW
    later = NOW + (horizon - NOW) * millionths // 1_000_000  # floored: strictly before the horizon
    assert evaluate(rules, given, later) == first


@settings(max_examples=200, deadline=None)
@given(inputs())
def test_a_positive_test_today_is_always_red_under_the_shipped_rules(given: Inputs) -> None:
    rules = default_rules()
    result = evaluate(rules, plus(given, tests=[LabResult(result="positive", sampled_at=NOW)]), NOW)
    # Only a green mark or an approved appeal at this very minute could clear it, and those come before it.
    assert result.colour == "red"
