"""Health status rules: a versioned rule file (data, JSON or TOML), validated at load, and the pure evaluation.

A rule file (see health_code/rules/default.json):

    {"version": "2026-11-22.1",
     "default": {"colour": "green", "reason": "no_risk", "notice": "..."},
     "rules": [{"id": "positive_test", "colour": "red", "reason": "positive_test", "notice": "...",
                "when": [{"kind": "positive_test", "within": "14d"}],
                "cleared_by": ["appeal", "manual_green"]}, ...]}

Rules are tried in order; the first whose conditions all hold gives the colour (default when none does).
Redder rules must come first and the default must be the greenest, so "first match wins" is also "the
worst colour wins": adding evidence never makes a status greener, adding what clears it never redder. Conditions (`kind`):

- positive_test {within}: a positive test sampled within the window.
- risk_trip {levels, within}: a trip within the window into a region that was a risk area of one of the
  levels at the time of the trip (an area's code covers the regions under it, GB/T 2260).
- manual_mark {colour}: an active manual mark of that colour set by health-authority staff (the rule's
  own colour: a mark gives its colour).
- doses_below {doses, effective_after}: fewer than `doses` vaccination doses given at least
  effective_after ago (an undated condition: it narrows a rule, it never triggers one alone in time).

Dated evidence (a test, a trip, a mark) is cleared by what the rule lists in `cleared_by` when that
happened after it: "negative_test" (a negative test sampled later), "appeal" (an approved appeal decided
later, for this rule's reason or for every reason), "manual_green" (a green manual mark set later and still
active). Durations are "<n>d", "<n>h" or "<n>m". Every outcome carries a reason code.

evaluate(rules, inputs, now) is pure: the same inputs in any order give the same Evaluation, which also says
until when it holds (the next moment a window opens or closes).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

Colour = Literal["green", "yellow", "red"]
Level = Literal["low", "medium", "high"]
Clearing = Literal["negative_test", "appeal", "manual_green"]
COLOURS: tuple[Colour, ...] = ("green", "yellow", "red")
SEVERITY: dict[str, int] = {"green": 0, "yellow": 1, "red": 2}
DEFAULT_RULES_FILE = Path(__file__).resolve().parent / "rules" / "default.json"

_CODE = r"^[a-z][a-z0-9_]{0,63}$"
_DURATION = re.compile(r"^([1-9][0-9]{0,4})([dhm])$")
_UNITS = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}
Code = Annotated[str, msgspec.Meta(pattern=_CODE)]
Notice = Annotated[str, msgspec.Meta(max_length=500)]


class RuleFileError(ValueError):
    """A rule file that cannot be used; the message names the rule and the field."""


# --- the file as written -------------------------------------------------------------------------------


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class PositiveTestSpec(_Strict, frozen=True, tag="positive_test", tag_field="kind"):
    within: str


class RiskTripSpec(_Strict, frozen=True, tag="risk_trip", tag_field="kind"):
    levels: Annotated[list[Level], msgspec.Meta(min_length=1)]
    within: str


class ManualMarkSpec(_Strict, frozen=True, tag="manual_mark", tag_field="kind"):
    colour: Colour


class DosesBelowSpec(_Strict, frozen=True, tag="doses_below", tag_field="kind"):
    doses: Annotated[int, msgspec.Meta(ge=1, le=10)]
    effective_after: str = "0m"


ConditionSpec = PositiveTestSpec | RiskTripSpec | ManualMarkSpec | DosesBelowSpec


class RuleSpec(_Strict, frozen=True):
    id: Code
    colour: Colour
    reason: Code
    when: Annotated[list[ConditionSpec], msgspec.Meta(min_length=1)]
    cleared_by: list[Clearing] = []
    notice: Notice = ""


class DefaultSpec(_Strict, frozen=True):
    colour: Colour = "green"
    reason: Code = "no_risk"
    notice: Notice = ""


class _Head(_Strict, frozen=True):
    version: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    default: DefaultSpec = DefaultSpec()


# --- the compiled rules ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PositiveTest:
    within: timedelta


@dataclass(frozen=True, slots=True)
class RiskTrip:
    levels: frozenset[str]
    within: timedelta


@dataclass(frozen=True, slots=True)
class ManualMarkIs:
    colour: str


@dataclass(frozen=True, slots=True)
class DosesBelow:
    doses: int
    effective_after: timedelta


Condition = PositiveTest | RiskTrip | ManualMarkIs | DosesBelow


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    colour: Colour
    reason: str
    conditions: tuple[Condition, ...]
    cleared_by: frozenset[str]
    notice: str


@dataclass(frozen=True, slots=True)
class RuleSet:
    version: str
    default_colour: Colour
    default_reason: str
    default_notice: str
    rules: tuple[Rule, ...]
    # The document as loaded (JSON-able), kept to store an activated rule set as it was checked.
    document: dict[str, Any] = field(compare=False, repr=False)

    @property
    def lookback(self) -> timedelta:
        """The longest window any rule looks back: older tests, trips and appeals cannot matter."""
        windows = [
            c.within for r in self.rules for c in r.conditions if isinstance(c, PositiveTest | RiskTrip)
        ]
        return max(windows, default=timedelta(days=1))

    def notice_for(self, reason: str) -> str:
        for rule in self.rules:
            if rule.reason == reason and rule.notice:
                return rule.notice
        return self.default_notice if reason == self.default_reason else ""


def parse_duration(text: str) -> timedelta:
    """ "14d" / "36h" / "30m" -> timedelta; ValueError otherwise."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"bad duration {text!r}: expected a whole number and d, h or m, e.g. '14d'")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _compile_condition(spec: ConditionSpec, where: str) -> Condition:
    def duration(value: str, name: str) -> timedelta:
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise RuleFileError(f"{where}.{name}: {exc}") from None

    if isinstance(spec, PositiveTestSpec):
        return PositiveTest(within=duration(spec.within, "within"))
    if isinstance(spec, RiskTripSpec):
        return RiskTrip(levels=frozenset(spec.levels), within=duration(spec.within, "within"))
    if isinstance(spec, ManualMarkSpec):
        return ManualMarkIs(colour=spec.colour)
    if spec.effective_after == "0m":
        return DosesBelow(doses=spec.doses, effective_after=timedelta(0))
    return DosesBelow(doses=spec.doses, effective_after=duration(spec.effective_after, "effective_after"))


_AT_PATH = re.compile(r" - at `\$(.*)`$")


def _msgspec_reason(exc: msgspec.ValidationError) -> str:
    """msgspec's "Expected ... - at `$.when[0].within`" as "when[0].within: Expected ..."."""
    text = str(exc)
    match = _AT_PATH.search(text)
    if match is None:
        return text
    path = match.group(1).lstrip(".")
    reason = text[: match.start()]
    return f"{path}: {reason}" if path else reason


def rules_from_document(document: Any) -> RuleSet:
    """Validate a decoded rule document (a dict from JSON or TOML) and compile it; RuleFileError names the
    rule (by id, or by position when it has none) and the field at fault."""
    if not isinstance(document, dict):
        raise RuleFileError("a rule file is an object with version, default and rules")
    head_fields = {k: v for k, v in document.items() if k != "rules"}
    try:
        head = msgspec.convert(head_fields, _Head)
    except msgspec.ValidationError as exc:
        raise RuleFileError(f"rule file: {_msgspec_reason(exc)}") from None
    raw_rules = document.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise RuleFileError("rule file: `rules` must be a non-empty list")
    compiled: list[Rule] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_rules):
        rule_id = raw.get("id") if isinstance(raw, dict) else None
        label = f"rule {rule_id!r}" if isinstance(rule_id, str) and rule_id else f"rule #{index + 1}"
        try:
            spec = msgspec.convert(raw, RuleSpec)
        except msgspec.ValidationError as exc:
            raise RuleFileError(f"{label}: {_msgspec_reason(exc)}") from None
        if spec.id in seen:
            raise RuleFileError(f"{label}: a second rule with this id")
        seen.add(spec.id)
        if compiled and SEVERITY[spec.colour] > SEVERITY[compiled[-1].colour]:
            raise RuleFileError(
                f"{label}: {spec.colour} after the {compiled[-1].colour} rule {compiled[-1].id!r}; "
                "first match wins, so redder rules must come first"
            )
        for i, condition in enumerate(spec.when):
            if isinstance(condition, ManualMarkSpec) and condition.colour != spec.colour:
                raise RuleFileError(
                    f"{label}: when[{i}]: a {condition.colour} mark in a {spec.colour} rule; a mark gives its own colour"
                )
        conditions = tuple(_compile_condition(c, f"{label}: when[{i}]") for i, c in enumerate(spec.when))
        compiled.append(
            Rule(
                id=spec.id,
                colour=spec.colour,
                reason=spec.reason,
                conditions=conditions,
                cleared_by=frozenset(spec.cleared_by),
                notice=spec.notice,
            )
        )
    if SEVERITY[head.default.colour] > SEVERITY[compiled[-1].colour]:
        raise RuleFileError(
            f"default: {head.default.colour} is redder than the last rule {compiled[-1].id!r} "
            f"({compiled[-1].colour}); the default comes last, so it must be the greenest"
        )
    return RuleSet(
        version=head.version,
        default_colour=head.default.colour,
        default_reason=head.default.reason,
        default_notice=head.default.notice,
        rules=tuple(compiled),
        document=document,
    )


def parse_rules(text: str | bytes, *, fmt: Literal["json", "toml"]) -> RuleSet:
    """Decode and validate a rule file's contents."""
    try:
        if fmt == "toml":
            document = tomllib.loads(text.decode() if isinstance(text, bytes) else text)
        else:
            document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RuleFileError(f"rule file: not valid {fmt.upper()}: {exc}") from None
    return rules_from_document(document)


def load_rules(path: str | Path) -> RuleSet:
    """Read and validate a rule file: .toml is TOML, anything else JSON."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise RuleFileError(f"{file.name}: cannot read ({exc.strerror})") from None
    return parse_rules(data, fmt="toml" if file.suffix.lower() == ".toml" else "json")


def default_rules() -> RuleSet:
    """The rule file shipped with the code, in force until ops activate another one."""
    return load_rules(DEFAULT_RULES_FILE)


# --- inputs ----------------------------------------------------------------------------------------------


class Trip(msgspec.Struct, frozen=True, kw_only=True):
    region: str
    at: datetime
    venue_id: UUID | None = None


class RiskArea(msgspec.Struct, frozen=True, kw_only=True):
    region: str
    level: Level
    valid_from: datetime
    valid_to: datetime | None = None


class LabResult(msgspec.Struct, frozen=True, kw_only=True):
    result: Literal["positive", "negative"]
    sampled_at: datetime


class Vaccination(msgspec.Struct, frozen=True, kw_only=True):
    dose: int
    at: datetime


class Mark(msgspec.Struct, frozen=True, kw_only=True):
    colour: Colour
    at: datetime
    cleared_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.at <= now and (self.cleared_at is None or now < self.cleared_at)


class AppealDecision(msgspec.Struct, frozen=True, kw_only=True):
    decision: Literal["approved", "rejected"]
    at: datetime
    reason_code: str | None = None


class Inputs(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the rules look at for one account. risk_areas: at least those covering its trips."""

    trips: list[Trip] = []
    risk_areas: list[RiskArea] = []
    tests: list[LabResult] = []
    vaccinations: list[Vaccination] = []
    marks: list[Mark] = []
    appeals: list[AppealDecision] = []


class Evaluation(msgspec.Struct, frozen=True, kw_only=True):
    colour: Colour
    # Reason codes of every rule that holds, in rule order (the first one decided); the default's otherwise.
    reasons: tuple[str, ...]
    # The deciding rule, None for the default.
    rule_id: str | None
    # When the deciding rule's evidence began; None for the default (no dated cause).
    since: datetime | None
    # The next moment the answer may change without new inputs; None when nothing is pending.
    until: datetime | None


def region_prefix(code: str) -> str:
    """What a GB/T 2260 code covers: 210000 -> "21" (province), 210100 -> "2101" (prefecture), else itself.
    The migration's generated column health_risk_areas.prefix computes the same."""
    if code.endswith("0000"):
        return code[:2]
    if code.endswith("00"):
        return code[:4]
    return code


def valid_region(code: str) -> bool:
    """Six ASCII digits, not starting with 0 (the shape of a GB/T 2260 code)."""
    return len(code) == 6 and code.isascii() and code.isdigit() and code[0] != "0"


def _covered(trip: Trip, areas: list[RiskArea], levels: frozenset[str]) -> bool:
    return any(
        area.level in levels
        and trip.region.startswith(region_prefix(area.region))
        and area.valid_from <= trip.at
        and (area.valid_to is None or trip.at < area.valid_to)
        for area in areas
    )


def _evidence(condition: Condition, inputs: Inputs, now: datetime, bounds: list[datetime]) -> list[datetime]:
    """Times of the dated evidence for a condition that counts at `now`; every time at which that could
    change goes into bounds."""
    found: list[datetime] = []
    if isinstance(condition, PositiveTest):
        for test in inputs.tests:
            if test.result == "positive":
                bounds += (test.sampled_at, test.sampled_at + condition.within)
                if test.sampled_at <= now < test.sampled_at + condition.within:
                    found.append(test.sampled_at)
    elif isinstance(condition, RiskTrip):
        for trip in inputs.trips:
            if _covered(trip, inputs.risk_areas, condition.levels):
                bounds += (trip.at, trip.at + condition.within)
                if trip.at <= now < trip.at + condition.within:
                    found.append(trip.at)
    elif isinstance(condition, ManualMarkIs):
        for mark in inputs.marks:
            if mark.colour == condition.colour:
                bounds.append(mark.at)
                if mark.cleared_at is not None:
                    bounds.append(mark.cleared_at)
                if mark.active(now):
                    found.append(mark.at)
    return found


def _doses(condition: DosesBelow, inputs: Inputs, now: datetime, bounds: list[datetime]) -> bool:
    given = 0
    for shot in inputs.vaccinations:
        effective = shot.at + condition.effective_after
        bounds.append(effective)
        if effective <= now:
            given = max(given, shot.dose)
    return given < condition.doses


def _last_clearing(rule: Rule, inputs: Inputs, now: datetime, bounds: list[datetime]) -> datetime | None:
    times: list[datetime] = []
    if "negative_test" in rule.cleared_by:
        for test in inputs.tests:
            if test.result == "negative":
                bounds.append(test.sampled_at)
                if test.sampled_at <= now:
                    times.append(test.sampled_at)
    if "appeal" in rule.cleared_by:
        for appeal in inputs.appeals:
            if appeal.decision == "approved" and appeal.reason_code in (None, rule.reason):
                bounds.append(appeal.at)
                if appeal.at <= now:
                    times.append(appeal.at)
    if "manual_green" in rule.cleared_by:
        for mark in inputs.marks:
            if mark.colour == "green":
                bounds.append(mark.at)
                if mark.cleared_at is not None:
                    bounds.append(mark.cleared_at)
                if mark.active(now):
                    times.append(mark.at)
    return max(times, default=None)


def _holds(rule: Rule, inputs: Inputs, now: datetime, bounds: list[datetime]) -> tuple[bool, datetime | None]:
    """(the rule holds, since when its evidence counts)."""
    cleared_before = _last_clearing(rule, inputs, now, bounds)
    holds = True
    since: datetime | None = None
    for condition in rule.conditions:
        if isinstance(condition, DosesBelow):
            holds = _doses(condition, inputs, now, bounds) and holds
            continue
        # Evidence is cleared by a clearing event strictly after it.
        times = [
            t
            for t in _evidence(condition, inputs, now, bounds)
            if cleared_before is None or t >= cleared_before
        ]
        if not times:
            holds = False
        else:
            first = min(times)
            since = first if since is None else max(since, first)
    return holds, since if holds else None


def evaluate(rules: RuleSet, inputs: Inputs, now: datetime) -> Evaluation:
    """The colour, reasons and since of one account at `now` (timezone-aware). Pure and deterministic."""
    bounds: list[datetime] = []
    held: list[tuple[Rule, datetime | None]] = []
    for rule in rules.rules:
        holds, since = _holds(rule, inputs, now, bounds)
        if holds:
            held.append((rule, since))
    until = min((b for b in bounds if b > now), default=None)
    if not held:
        return Evaluation(
            colour=rules.default_colour,
            reasons=(rules.default_reason,),
            rule_id=None,
            since=None,
            until=until,
        )
    reasons = tuple(dict.fromkeys(rule.reason for rule, _ in held))
    first, since = held[0]
    return Evaluation(colour=first.colour, reasons=reasons, rule_id=first.id, since=since, until=until)
