"""Health rules: rule files are validated at load with errors that name the rule, and evaluation gives the
colour the rules say for each kind of input (first match wins, default green, a reason every time)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from health_code.rules import (
    DEFAULT_RULES_FILE,
    AppealDecision,
    Inputs,
    LabResult,
    Mark,
    RiskArea,
    RuleFileError,
    Trip,
    Vaccination,
    default_rules,
    evaluate,
    load_rules,
    parse_duration,
    parse_rules,
    region_prefix,
    rules_from_document,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
RULES = default_rules()


def days(n: float) -> timedelta:
    return timedelta(days=n)


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DEFAULT_RULES_FILE.read_text())
    return loaded


def error_of(doc: Any) -> str:
    with pytest.raises(RuleFileError) as caught:
        rules_from_document(doc)
    return str(caught.value)


# --- rule files ------------------------------------------------------------------------------------------


def test_the_shipped_rule_file_is_valid_and_versioned() -> None:
    assert RULES.version == "2026-11-22.1"
    assert [rule.id for rule in RULES.rules][:2] == ["manual_red", "positive_test"]
    assert RULES.lookback == days(14)


def test_an_unknown_field_names_the_rule_and_the_field() -> None:
    doc = document()
    doc["rules"][1]["colur"] = "red"
    message = error_of(doc)
    assert "rule 'positive_test'" in message and "colur" in message


def test_a_bad_colour_names_the_rule() -> None:
    doc = document()
    doc["rules"][3]["colour"] = "blue"
    message = error_of(doc)
    assert message.startswith("rule 'high_risk_trip': colour:") and "blue" in message


def test_a_bad_duration_names_the_rule_and_the_condition() -> None:
    doc = document()
    doc["rules"][1]["when"][0]["within"] = "14 days"
    message = error_of(doc)
    assert message.startswith("rule 'positive_test': when[0].within: bad duration '14 days'")
    doc["rules"][4]["when"][1]["effective_after"] = "two weeks"
    doc["rules"][1]["when"][0]["within"] = "14d"
    assert "rule 'medium_risk_trip_unvaccinated': when[1].effective_after" in error_of(doc)


def test_an_unknown_condition_kind_a_bad_level_and_a_bad_clearing_are_refused() -> None:
    doc = document()
    doc["rules"][1]["when"][0] = {"kind": "fever", "within": "1d"}
    assert "rule 'positive_test': when[0].kind" in error_of(doc)
    doc = document()
    doc["rules"][3]["when"][0]["levels"] = ["extreme"]
    assert "rule 'high_risk_trip': when[0].levels[0]" in error_of(doc)
    doc = document()
    doc["rules"][3]["cleared_by"] = ["prayer"]
    assert "rule 'high_risk_trip': cleared_by[0]" in error_of(doc)


def test_a_rule_without_id_is_named_by_position_and_ids_are_unique() -> None:
    doc = document()
    del doc["rules"][1]["id"]
    assert error_of(doc).startswith("rule #2: ")
    doc = document()
    doc["rules"][1]["id"] = "manual_red"
    assert error_of(doc) == "rule 'manual_red': a second rule with this id"


def test_redder_rules_must_come_first() -> None:
    doc = document()
    doc["rules"][1], doc["rules"][2] = doc["rules"][2], doc["rules"][1]
    message = error_of(doc)
    assert message.startswith("rule 'positive_test': red after the yellow rule 'manual_yellow'")


def test_file_level_errors() -> None:
    doc = document()
    del doc["version"]
    assert "version" in error_of(doc)
    doc = document()
    doc["owner"] = "me"
    assert error_of(doc).startswith("rule file:") and "owner" in error_of(doc)
    doc = document()
    doc["rules"] = []
    assert "non-empty" in error_of(doc)
    with pytest.raises(RuleFileError, match="not valid JSON"):
        parse_rules("{", fmt="json")
    assert error_of([1, 2]).startswith("a rule file is an object")


def test_toml_and_json_files_load_the_same_rules(tmp_path: Path) -> None:
    toml = tmp_path / "rules.toml"
    toml.write_text(
        """
version = "t-1"
[default]
colour = "green"
reason = "no_risk"

[[rules]]
id = "positive_test"
colour = "red"
reason = "positive_test"
cleared_by = ["appeal"]
when = [{ kind = "positive_test", within = "14d" }]
"""
    )
    as_json = tmp_path / "rules.json"
    as_json.write_text(
        json.dumps(
            {
                "version": "t-1",
                "default": {"colour": "green", "reason": "no_risk"},
                "rules": [
                    {
                        "id": "positive_test",
                        "colour": "red",
                        "reason": "positive_test",
                        "cleared_by": ["appeal"],
                        "when": [{"kind": "positive_test", "within": "14d"}],
                    }
                ],
            }
        )
    )
    assert load_rules(toml) == load_rules(as_json)
    with pytest.raises(RuleFileError, match="cannot read"):
        load_rules(tmp_path / "missing.json")


def test_durations_and_region_prefixes() -> None:
    assert parse_duration("14d") == days(14)
    assert parse_duration("36h") == timedelta(hours=36)
    assert parse_duration("30m") == timedelta(minutes=30)
    for bad in ("0d", "14", "d", "1w", "-1d", "1.5d", " 14d"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert region_prefix("210000") == "21"
    assert region_prefix("210100") == "2101"
    assert region_prefix("210102") == "210102"


def test_rules_check_command(tmp_path: Path) -> None:
    from scripts.cli import app

    runner = CliRunner(env={"COLUMNS": "200"})
    good = runner.invoke(app, ["health", "rules", "check", str(DEFAULT_RULES_FILE)])
    assert good.exit_code == 0, good.output
    assert "valid, version 2026-11-22.1, 5 rules" in good.output
    doc = document()
    doc["rules"][0]["colour"] = "purple"
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps(doc))
    bad = runner.invoke(app, ["health", "rules", "check", str(bad_file)])
    assert bad.exit_code == 1
    assert "bad.json: rule 'manual_red': colour:" in bad.output


# --- evaluation: each input kind -------------------------------------------------------------------------

HIGH_SHENYANG = RiskArea(region="210100", level="high", valid_from=NOW - days(10), valid_to=NOW - days(2))
MEDIUM_DALIAN = RiskArea(region="210200", level="medium", valid_from=NOW - days(10))


def colour_of(inputs: Inputs, now: datetime = NOW) -> str:
    return evaluate(RULES, inputs, now).colour


def test_no_inputs_is_green_with_the_default_reason() -> None:
    result = evaluate(RULES, Inputs(), NOW)
    assert (result.colour, result.reasons, result.rule_id, result.since, result.until) == (
        "green",
        ("no_risk",),
        None,
        None,
        None,
    )


def test_a_positive_test_within_14_days_is_red_since_the_sample() -> None:
    sampled = NOW - days(3)
    result = evaluate(RULES, Inputs(tests=[LabResult(result="positive", sampled_at=sampled)]), NOW)
    assert (result.colour, result.reasons, result.rule_id) == ("red", ("positive_test",), "positive_test")
    assert result.since == sampled and result.until == sampled + days(14)
    assert (
        evaluate(
            RULES, Inputs(tests=[LabResult(result="positive", sampled_at=sampled)]), sampled + days(14)
        ).colour
        == "green"
    )


def test_a_trip_into_a_high_risk_area_during_its_window_is_yellow() -> None:
    trip = Trip(region="210102", at=NOW - days(5))  # a district of Shenyang: covered by 210100
    inputs = Inputs(trips=[trip], risk_areas=[HIGH_SHENYANG])
    result = evaluate(RULES, inputs, NOW)
    assert (result.colour, result.reasons, result.since) == ("yellow", ("high_risk_trip",), trip.at)
    assert result.until == trip.at + days(14)
    # before the area's window, after it, elsewhere, or at a lower level: no effect
    for other in (
        Trip(region="210102", at=NOW - days(11)),
        Trip(region="210102", at=NOW - days(1)),
        Trip(region="210202", at=NOW - days(5)),
        Trip(region="220102", at=NOW - days(5)),
    ):
        assert colour_of(Inputs(trips=[other], risk_areas=[HIGH_SHENYANG])) == "green"
    low = RiskArea(region="210000", level="low", valid_from=NOW - days(30))
    assert colour_of(Inputs(trips=[trip], risk_areas=[low])) == "green"
    # a whole province covers its districts
    province = RiskArea(region="210000", level="high", valid_from=NOW - days(30))
    assert colour_of(Inputs(trips=[trip], risk_areas=[province])) == "yellow"


def test_a_negative_test_after_the_trip_clears_it_one_before_does_not() -> None:
    trip = Trip(region="210102", at=NOW - days(5))
    after = LabResult(result="negative", sampled_at=NOW - days(4))
    before = LabResult(result="negative", sampled_at=NOW - days(6))
    assert colour_of(Inputs(trips=[trip], risk_areas=[HIGH_SHENYANG], tests=[after])) == "green"
    assert colour_of(Inputs(trips=[trip], risk_areas=[HIGH_SHENYANG], tests=[before])) == "yellow"
    # a negative test never clears a positive one
    positive = LabResult(result="positive", sampled_at=NOW - days(6))
    assert colour_of(Inputs(tests=[positive, after])) == "red"


def test_manual_marks_give_their_colour_until_cleared_and_green_clears_what_came_before() -> None:
    red = Mark(colour="red", at=NOW - days(1))
    assert evaluate(RULES, Inputs(marks=[red]), NOW).reasons == ("manual_red",)
    assert colour_of(Inputs(marks=[Mark(colour="yellow", at=NOW - days(40))])) == "yellow"
    assert (
        colour_of(Inputs(marks=[Mark(colour="red", at=NOW - days(2), cleared_at=NOW - days(1))])) == "green"
    )
    positive = LabResult(result="positive", sampled_at=NOW - days(3))
    green_after = Mark(colour="green", at=NOW - days(1))
    assert colour_of(Inputs(tests=[positive], marks=[green_after])) == "green"
    green_before = Mark(colour="green", at=NOW - days(4))
    assert colour_of(Inputs(tests=[positive], marks=[green_before])) == "red"
    assert colour_of(Inputs(marks=[red, green_before])) == "red"


def test_an_approved_appeal_after_the_input_clears_it() -> None:
    positive = LabResult(result="positive", sampled_at=NOW - days(3))
    approved = AppealDecision(decision="approved", at=NOW - days(1))
    assert colour_of(Inputs(tests=[positive], appeals=[approved])) == "green"
    assert (
        colour_of(Inputs(tests=[positive], appeals=[AppealDecision(decision="rejected", at=NOW - days(1))]))
        == "red"
    )
    other_reason = AppealDecision(decision="approved", at=NOW - days(1), reason_code="high_risk_trip")
    assert colour_of(Inputs(tests=[positive], appeals=[other_reason])) == "red"
    same_reason = AppealDecision(decision="approved", at=NOW - days(1), reason_code="positive_test")
    assert colour_of(Inputs(tests=[positive], appeals=[same_reason])) == "green"
    newer_positive = LabResult(result="positive", sampled_at=NOW - days(0.5))
    assert colour_of(Inputs(tests=[positive, newer_positive], appeals=[approved])) == "red"


def test_vaccination_doses_decide_the_medium_risk_rule() -> None:
    trip = Trip(region="210202", at=NOW - days(3))
    base = Inputs(trips=[trip], risk_areas=[MEDIUM_DALIAN])
    assert evaluate(RULES, base, NOW).reasons == ("medium_risk_trip_unvaccinated",)
    two_doses = [Vaccination(dose=1, at=NOW - days(200)), Vaccination(dose=2, at=NOW - days(100))]
    assert colour_of(Inputs(trips=[trip], risk_areas=[MEDIUM_DALIAN], vaccinations=two_doses)) == "green"
    # a second dose counts 14 days after it was given
    recent = [Vaccination(dose=1, at=NOW - days(200)), Vaccination(dose=2, at=NOW - days(3))]
    result = evaluate(RULES, Inputs(trips=[trip], risk_areas=[MEDIUM_DALIAN], vaccinations=recent), NOW)
    assert result.colour == "yellow"
    assert result.until == NOW - days(3) + days(7)  # the trip leaves the 7-day window before the dose counts


def test_every_rule_that_holds_is_a_reason_and_the_first_decides() -> None:
    inputs = Inputs(
        trips=[Trip(region="210102", at=NOW - days(5))],
        risk_areas=[HIGH_SHENYANG],
        tests=[LabResult(result="positive", sampled_at=NOW - days(2))],
        marks=[Mark(colour="yellow", at=NOW - days(1))],
    )
    result = evaluate(RULES, inputs, NOW)
    assert result.colour == "red"
    assert result.rule_id == "positive_test"
    assert result.reasons == ("positive_test", "manual_yellow", "high_risk_trip")
