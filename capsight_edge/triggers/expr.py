"""The trigger rule language: boolean expressions over named signals.

    hand_motion & barcode          a scanned item went past the camera
    weight_delta & !barcode[3s]    weight changed and nothing was scanned in the 3 s before
    (bump | unstable) & !weight_delta

Grammar (``!`` binds tightest, then ``&``, then ``|``; parentheses group)::

    expr   := term ('|' term)*
    term   := factor ('&' factor)*
    factor := '!' factor | '(' expr ')' | SIGNAL window?
    window := '[' NUMBER ('s' | 'ms') ']'

A signal with a window is true when it was raised at any moment within that long before now.
Without a window, an instantaneous signal (a barcode read, a weight event, a bump, a manual
trigger) counts for :data:`DEFAULT_PULSE_S` after it was raised; a state (hand motion, unstable
weight, cart moving) counts while it lasts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

#: Every signal a rule may name, and what raises it.
SIGNALS: dict[str, str] = {
    "hand_motion": "motion in the basket region of the camera",
    "barcode": "a barcode was decoded recently",
    "weight_delta": "an item was added or removed (stable weight changed)",
    "weight_added": "the stable weight went up by at least the item threshold",
    "weight_removed": "the stable weight went down by at least the item threshold",
    "unstable": "the load cells are not settled",
    "bump": "the IMU saw a jolt (kerb, collision)",
    "cart_moving": "the cart is moving (IMU or position)",
    "manual": "a person asked for a capture (`capsight trigger manual`)",
    "model_uncertain": "the cart's model named a product with a top score under "
    "[model] uncertain_below",
    "model_disagrees": "the cart's model names another product than the barcode just read, "
    "none when one was read, or a product when none was read",
    "weight_mismatch": "a code stating its net weight (GS1 AI 310n) was read, and the item "
    "added to the basket weighs more or less than that beyond [load_cells] tolerance",
}
#: Signals that happen at an instant (the others are states that last).
PULSES = frozenset(
    {
        "barcode",
        "weight_delta",
        "weight_added",
        "weight_removed",
        "bump",
        "manual",
        "model_uncertain",
        "model_disagrees",
        "weight_mismatch",
    }
)
DEFAULT_PULSE_S = 1.0
MAX_WINDOW_S = 600.0

_TOKEN = re.compile(
    r"\s*(?:(?P<op>[&|!()])|(?P<window>\[\s*\d+(?:\.\d+)?\s*(?:ms|s)\s*\])"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*))"
)


class RuleSyntaxError(ValueError):
    """The rule text is not a valid expression; ``position`` is the character offset."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at character {position}")
        self.position = position


class SignalView(Protocol):
    def active(self, name: str, window_s: float | None) -> bool: ...


Signals = Mapping[str, bool] | SignalView


@dataclass(frozen=True)
class Signal:
    name: str
    window_s: float | None = None

    def evaluate(self, signals: Signals) -> bool:
        if isinstance(signals, Mapping):
            return bool(signals.get(self.name, False))
        return signals.active(self.name, self.window_s)


@dataclass(frozen=True)
class Not:
    operand: Node

    def evaluate(self, signals: Signals) -> bool:
        return not self.operand.evaluate(signals)


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]

    def evaluate(self, signals: Signals) -> bool:
        return all(o.evaluate(signals) for o in self.operands)


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]

    def evaluate(self, signals: Signals) -> bool:
        return any(o.evaluate(signals) for o in self.operands)


Node = Signal | Not | And | Or


def _tokenize(text: str) -> list[tuple[str, int]]:
    tokens: list[tuple[str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            bad = pos + len(text[pos:]) - len(text[pos:].lstrip())
            raise RuleSyntaxError(f"unexpected {text[bad]!r}", bad)
        kind = "op" if m.group("op") else "window" if m.group("window") else "name"
        tokens.append((m.group(kind), m.start(kind)))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def pos(self) -> int:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else len(self.text)

    def take(self) -> str:
        tok = self.tokens[self.i][0]
        self.i += 1
        return tok

    def expr(self) -> Node:
        parts = [self.term()]
        while self.peek() == "|":
            self.take()
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def term(self) -> Node:
        parts = [self.factor()]
        while self.peek() == "&":
            self.take()
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def factor(self) -> Node:
        tok, pos = self.peek(), self.pos()
        if tok is None:
            raise RuleSyntaxError("expression ends too early", pos)
        if tok == "!":
            self.take()
            return Not(self.factor())
        if tok == "(":
            self.take()
            node = self.expr()
            if self.peek() != ")":
                raise RuleSyntaxError("missing ')'", self.pos())
            self.take()
            return node
        if tok in "&|)" or tok.startswith("["):
            raise RuleSyntaxError(f"unexpected {tok!r}", pos)
        if tok not in SIGNALS:
            raise RuleSyntaxError(
                f"unknown signal {tok!r} (known: {', '.join(sorted(SIGNALS))})", pos
            )
        self.take()
        window = None
        nxt = self.peek()
        if nxt is not None and nxt.startswith("["):
            wpos = self.pos()
            text = self.take()[1:-1].replace(" ", "")
            window = float(text[:-2]) / 1000 if text.endswith("ms") else float(text[:-1])
            if not 0 < window <= MAX_WINDOW_S:
                raise RuleSyntaxError(
                    f"window {text} out of range (0 < window <= {MAX_WINDOW_S:g}s)", wpos
                )
        return Signal(tok, window)


def parse_rule(text: str) -> Node:
    """Parse a rule; raises :class:`RuleSyntaxError` naming the offending position."""
    parser = _Parser(text)
    node = parser.expr()
    if parser.peek() is not None:
        raise RuleSyntaxError(f"unexpected {parser.peek()!r}", parser.pos())
    return node


def signals_of(node: Node) -> set[str]:
    """The signal names a rule reads."""
    if isinstance(node, Signal):
        return {node.name}
    if isinstance(node, Not):
        return signals_of(node.operand)
    out: set[str] = set()
    for o in node.operands:
        out |= signals_of(o)
    return out
