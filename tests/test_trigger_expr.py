from __future__ import annotations

import itertools

import pytest

from capsight_edge.triggers.expr import RuleSyntaxError, parse_rule, signals_of


def truth(rule: str, **signals: bool) -> bool:
    return parse_rule(rule).evaluate(signals)


def test_composite_rules() -> None:
    assert truth("hand_motion & barcode", hand_motion=True, barcode=True)
    assert not truth("hand_motion & barcode", hand_motion=True)
    assert truth("weight_delta & !barcode", weight_delta=True)
    assert not truth("weight_delta & !barcode", weight_delta=True, barcode=True)


def test_precedence_matches_python_boolean_logic() -> None:
    rule = "!bump | hand_motion & barcode"
    for a, b, c in itertools.product([False, True], repeat=3):
        expect = (not a) or (b and c)
        assert truth(rule, bump=a, hand_motion=b, barcode=c) is expect


def test_parentheses() -> None:
    assert not truth("(bump | unstable) & !weight_delta", bump=True, weight_delta=True)
    assert truth("(bump | unstable) & !weight_delta", unstable=True)


def test_signals_of() -> None:
    assert signals_of(parse_rule("(bump|unstable)&!barcode")) == {"bump", "unstable", "barcode"}


@pytest.mark.parametrize(
    ("text", "pos"),
    [
        ("", 0),
        ("barcode &", 9),
        ("(barcode", 8),
        ("barcode barcode", 8),
        ("& barcode", 0),
        ("barcode $", 8),
    ],
)
def test_syntax_errors_give_position(text: str, pos: int) -> None:
    with pytest.raises(RuleSyntaxError) as err:
        parse_rule(text)
    assert err.value.position == pos
