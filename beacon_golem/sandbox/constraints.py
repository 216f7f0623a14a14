"""The LDAP-style constraint language of Golem demands and offers, parsed and matched.

yapapi's DemandBuilder joins clauses as `(&(a=b)\\n\\t(c>=1)\\n\\t(|(x=*)(y=*)))`; yagna's payment
decorations add `(golem.com.payment.protocol.version>1)`. What this module understands (the subset
yagna's market resolver matches on):

- groups `(&F...)`, `(|F...)`, `(!F)`; an empty `(&)` is true, an empty `(|)` false;
- comparisons `key=value`, `key>=value`, `key<=value`, `key>value`, `key<value`;
- presence `key=*`, wildcards `key=nvidia*` (`*` matches any text), `\\` escapes a character;
- keys as Golem writes them (`golem.!exp.gap-35.v1.inf.gpu.model`, `...accept-timeout?`);
- list-valued properties (`golem.runtime.capabilities`): `=` holds when any element matches;
- numbers compared as numbers where both sides are numeric (`"3" > 1`), booleans as `true`/`false`.

A property that is absent makes its comparison false. A demand's constraints are matched against
the offer's properties and the offer's constraints against the demand's (`mutual_match`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Operator = Literal["=", ">=", "<=", ">", "<"]


class ConstraintSyntaxError(ValueError):
    """A constraint string that is not in the filter language."""


class Comparison(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["cmp"] = "cmp"
    key: str
    op: Operator
    value: str
    #: The value held an unescaped `*`: `=` is a glob (a lone `*` is presence).
    wildcard: bool = False

    def __str__(self) -> str:
        return f"({self.key}{self.op}{self.value})"

    def matches(self, props: Mapping[str, Any]) -> bool:
        if self.key not in props:
            return False
        actual = props[self.key]
        values = actual if isinstance(actual, list) else [actual]
        if self.op == "=" and self.wildcard and self.value == "*":
            return True
        return any(self._holds(v) for v in values)

    def _holds(self, actual: Any) -> bool:
        if self.op == "=":
            if self.wildcard:
                return fnmatch.fnmatchcase(_text(actual), self.value)
            left, right = _number(actual), _number(self.value)
            if left is not None and right is not None:
                return left == right
            return _text(actual) == self.value
        left, right = _number(actual), _number(self.value)
        if left is None or right is None:
            return False
        if self.op == ">=":
            return left >= right
        if self.op == "<=":
            return left <= right
        if self.op == ">":
            return left > right
        return left < right

    def failing(self, props: Mapping[str, Any]) -> list[str]:
        return [] if self.matches(props) else [str(self)]


class Group(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["&", "|", "!"]
    items: tuple[Filter, ...]

    def __str__(self) -> str:
        return f"({self.kind}{''.join(str(i) for i in self.items)})"

    def matches(self, props: Mapping[str, Any]) -> bool:
        if self.kind == "&":
            return all(i.matches(props) for i in self.items)
        if self.kind == "|":
            return any(i.matches(props) for i in self.items)
        return not self.items[0].matches(props)

    def failing(self, props: Mapping[str, Any]) -> list[str]:
        """The smallest clauses that make this filter false (empty when it holds)."""
        if self.matches(props):
            return []
        if self.kind == "&":
            return [f for i in self.items for f in i.failing(props)]
        return [str(self)]


Filter = Comparison | Group
Group.model_rebuild()


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        return Decimal(str(value))
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> ConstraintSyntaxError:
        return ConstraintSyntaxError(f"constraints: {what} at position {self.pos} of {self.text!r}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        self.skip_space()
        if self.peek() != char:
            raise self.fail(f"expected {char!r}, found {self.peek() or 'the end'!r}")
        self.pos += 1

    def parse(self) -> Filter:
        result = self.filter()
        self.skip_space()
        if self.pos != len(self.text):
            raise self.fail("unexpected text after the filter")
        return result

    def filter(self) -> Filter:
        self.expect("(")
        self.skip_space()
        head = self.peek()
        if head in ("&", "|"):
            self.pos += 1
            items: list[Filter] = []
            while True:
                self.skip_space()
                if self.peek() == ")":
                    self.pos += 1
                    return Group(kind=head, items=tuple(items))  # type: ignore[arg-type]
                if self.peek() != "(":
                    raise self.fail(f"expected '(' or ')' in a {head!r} group")
                items.append(self.filter())
        if head == "!":
            self.pos += 1
            inner = self.filter()
            self.expect(")")
            return Group(kind="!", items=(inner,))
        return self.comparison()

    def comparison(self) -> Comparison:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in "=<>()":
            self.pos += 1
        key = self.text[start : self.pos].strip()
        if not key:
            raise self.fail("missing property name")
        if self.peek() not in ("=", "<", ">"):
            raise self.fail(f"expected an operator after {key!r}")
        op = self.peek()
        self.pos += 1
        if op in "<>" and self.peek() == "=":
            op += "="
            self.pos += 1
        value, wildcard = self.value()
        self.expect(")")
        if wildcard and op != "=":
            raise self.fail(f"a wildcard needs '=', not {op!r}")
        return Comparison(key=key, op=op, value=value, wildcard=wildcard)  # type: ignore[arg-type]

    def value(self) -> tuple[str, bool]:
        out: list[str] = []
        wildcard = False
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\":
                if self.pos + 1 >= len(self.text):
                    raise self.fail("a dangling escape")
                escaped = self.text[self.pos + 1]
                out.append("[*]" if escaped == "*" else _glob_literal(escaped))
                self.pos += 2
                continue
            if char == ")":
                break
            if char == "(":
                raise self.fail("an unescaped '(' in a value")
            if char == "*":
                wildcard = True
                out.append("*")
            else:
                out.append(_glob_literal(char))
            self.pos += 1
        raw = "".join(out).strip()
        if not wildcard:
            raw = _unglob(raw)
        return raw, wildcard


def _glob_literal(char: str) -> str:
    """A character that fnmatch must take literally."""
    return f"[{char}]" if char in "?[]" else char


def _unglob(text: str) -> str:
    return re.sub(r"\[(.)\]", r"\1", text)


def parse(text: str) -> Filter:
    """Parse a constraint string; an empty string (no constraints) is `(&)`, which always holds."""
    if not text or not text.strip():
        return Group(kind="&", items=())
    return _Parser(text).parse()


def flatten(props: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Properties as dotted keys: yagna matches `a.b` whether it was sent flat or nested."""
    flat: dict[str, Any] = {}
    for key, value in props.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


class MatchResult(BaseModel):
    matched: bool
    #: Demand clauses the offer's properties fail.
    demand_failing: list[str] = []
    #: Offer clauses the demand's properties fail.
    offer_failing: list[str] = []

    @property
    def reason(self) -> str:
        parts = []
        if self.demand_failing:
            parts.append("the demand requires " + ", ".join(self.demand_failing))
        if self.offer_failing:
            parts.append("the offer requires " + ", ".join(self.offer_failing))
        return "; ".join(parts) or "match"


def mutual_match(
    demand_props: Mapping[str, Any],
    demand_constraints: Filter,
    offer_props: Mapping[str, Any],
    offer_constraints: Filter,
) -> MatchResult:
    """Golem's matching: each side's constraints hold over the other side's properties."""
    offer_flat = flatten(offer_props)
    demand_flat = flatten(demand_props)
    demand_failing = demand_constraints.failing(offer_flat)
    offer_failing = offer_constraints.failing(demand_flat)
    return MatchResult(
        matched=not demand_failing and not offer_failing,
        demand_failing=demand_failing,
        offer_failing=offer_failing,
    )
