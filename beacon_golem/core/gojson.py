"""Go's `encoding/json`, byte for byte: what Project Beacon signs and hashes.

Beacon (a Go service) signs JobSpecs and receipts over `CanonicalJSON`: the value marshalled,
parsed back into generic Go values (every number becomes a float64), and written with object
keys sorted by byte order, no whitespace, and Go's string escaping. Python's `json.dumps`
differs in three places that change the bytes, and so the signature:

* strings: Go escapes `<`, `>` and `&` as `\\u003c`, `\\u003e`, `\\u0026`, and U+2028 / U+2029;
  it writes `\\b`, `\\f`, `\\n`, `\\r`, `\\t` and `\\u00XX` (lower-case hex) for the other control
  characters; everything else, non-ASCII included, is raw UTF-8 (an invalid code point such as
  a lone surrogate becomes U+FFFD, as Go's decoder makes it);
* numbers: a float64 is written in the shortest form that reads back to the same value, without
  an exponent unless it is below 1e-6 or at least 1e21 (`600000000000`, `0.67`, `1e-7`, `1e+21`);
  integers pass through float64 first, as Beacon's canonicalizer does;
* key order: sorted by UTF-8 bytes (the same as Python's code-point order for valid text).

`go_canonical_json(value)` returns those bytes. `go_json_loads(text)` parses JSON as Go's
decoder into `interface{}` does (duplicate keys: the last one wins, as in Python).
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from decimal import Decimal
from typing import Any

_HTML_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class GoJSONError(ValueError):
    """A value Go's encoder refuses (NaN, infinity) or a type JSON has no form for."""


_SURROGATE = re.compile("[\ud800-\udfff]")
_encode_basestring = json.encoder.encode_basestring  # C-accelerated: what json.dumps(ensure_ascii=False) writes


def go_string(text: str) -> str:
    """A JSON string literal exactly as Go's `json.Marshal` writes it (HTML escaping on).

    Python's encoder already writes `\\"`, `\\\\`, `\\b`, `\\f`, `\\n`, `\\r`, `\\t` and lower-case
    `\\u00XX` for the other control characters, as Go does; Go also escapes `<`, `>`, `&`, U+2028
    and U+2029, and has made a lone surrogate U+FFFD when it decoded the text.
    """
    if _SURROGATE.search(text):
        text = _SURROGATE.sub("\ufffd", text)
    out = _encode_basestring(text)
    if "<" in out or ">" in out or "&" in out or "\u2028" in out or "\u2029" in out:
        out = out.translate(_HTML_ESCAPES)
    return out


def go_float(value: float) -> str:
    """A float64 as Go's encoder writes it ('f' format, shortest digits; 'e' outside [1e-6, 1e21))."""
    if math.isnan(value) or math.isinf(value):
        raise GoJSONError(f"json: unsupported value: {value}")
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    shortest = Decimal(repr(value)).normalize()  # repr: the shortest digits that read back
    magnitude = abs(value)
    if 1e-6 <= magnitude < 1e21:
        return format(shortest, "f")
    sign, digits, exponent = shortest.as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    exp = exponent + len(text) - 1
    # Go writes at least two exponent digits, then trims "e-07" to "e-7".
    tail = f"e-{-exp}" if exp < 0 else f"e+{exp:02d}"
    return ("-" if sign else "") + mantissa + tail


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(go_string(value))
    elif isinstance(value, int | float):
        try:
            number = float(value)  # every number passes through float64
        except OverflowError:
            raise GoJSONError(f"json: cannot unmarshal number {value} into Go value of type float64") from None
        out.append(go_float(number))
    elif isinstance(value, dict):
        out.append("{")
        first = True
        for key in sorted(value, key=lambda k: str(k).encode("utf-8", "surrogatepass")):
            if not first:
                out.append(",")
            first = False
            out.append(go_string(str(key)))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise GoJSONError(f"json: unsupported type: {type(value).__name__}")


def go_canonical_text(value: Any) -> str:
    out: list[str] = []
    _write(value, out)
    return "".join(out)


def go_canonical_json(value: Any) -> bytes:
    """Beacon's `CanonicalJSON(value)`: sorted keys, compact, Go's escaping and number format."""
    return go_canonical_text(value).encode("utf-8")


def go_json_loads(text: str | bytes) -> Any:
    """JSON parsed as Go parses it into `interface{}`: numbers that overflow float64 are refused."""

    def number(literal: str) -> float:
        parsed = float(literal)
        if math.isinf(parsed):
            raise GoJSONError(f"json: cannot unmarshal number {literal} into Go value of type float64")
        return parsed

    return json.loads(text, parse_float=number, parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    raise GoJSONError(f"invalid character '{name[0]}' looking for beginning of value")


# ---------------------------------------------------------------------------------------
# Go structs: `json.Unmarshal` into a typed struct and `json.Marshal` back, field by field.
# Keys the struct does not know drop out; fields without `omitempty` come back with their zero
# values; a key matches a field exactly, else case-insensitively (as Go's decoder does).


class GoDecodeError(ValueError):
    """What Go's `json.Unmarshal` into the JobSpec struct refuses (Beacon answers 400)."""


class GoType:
    """A Go type: decode JSON into it (as Go does) and encode it back (as Go does)."""

    def zero(self) -> Any:
        return None

    def decode(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def encode(self, value: Any) -> Any:
        return value

    def empty(self, value: Any) -> bool:
        """What `omitempty` leaves out."""
        return value is None


class GoString(GoType):
    def zero(self) -> Any:
        return ""

    def decode(self, value: Any, path: str) -> Any:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise GoDecodeError(f"{path}: cannot unmarshal {go_kind(value)} into a Go string")
        return value

    def empty(self, value: Any) -> bool:
        return value == ""


class GoInt(GoType):
    def __init__(self, what: str = "int") -> None:
        self.what = what

    def zero(self) -> Any:
        return 0

    def decode(self, value: Any, path: str) -> Any:
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            hint = " (integer nanoseconds; a string such as '30m' is refused)" if self.what == "time.Duration" else ""
            raise GoDecodeError(f"{path}: cannot unmarshal {go_kind(value)} into Go {self.what}{hint}")
        if not -(2**63) <= value < 2**63:
            raise GoDecodeError(f"{path}: number {value} overflows Go {self.what}")
        return value

    def empty(self, value: Any) -> bool:
        return value == 0


class GoFloat(GoType):
    def zero(self) -> Any:
        return 0.0

    def decode(self, value: Any, path: str) -> Any:
        if value is None:
            return 0.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise GoDecodeError(f"{path}: cannot unmarshal {go_kind(value)} into Go float64")
        return float(value)

    def empty(self, value: Any) -> bool:
        return value == 0


class GoBool(GoType):
    def zero(self) -> Any:
        return False

    def decode(self, value: Any, path: str) -> Any:
        if value is None:
            return False
        if not isinstance(value, bool):
            raise GoDecodeError(f"{path}: cannot unmarshal {go_kind(value)} into Go bool")
        return value

    def empty(self, value: Any) -> bool:
        return value is False


RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def go_time_text(value: str) -> str | None:
    """An RFC 3339 time as Go's `time.Time` marshals it back after parsing it; None if Go refuses it."""
    match = RFC3339.match(value)
    if match is None:
        return None
    try:
        datetime.fromisoformat(match.group(1))
    except ValueError:
        return None
    base, fraction, zone = match.groups()
    fraction = (fraction or "")[:10].rstrip("0")  # Go keeps nanoseconds, trims trailing zeros
    if fraction == ".":
        fraction = ""
    if zone in ("+00:00", "-00:00"):
        zone = "Z"
    return base + fraction + zone


class GoTime(GoType):
    """time.Time: an RFC 3339 string, written back as Go writes it (RFC3339Nano: the fraction
    without trailing zeros, `Z` for a zero offset, other offsets kept)."""

    def zero(self) -> Any:
        return "0001-01-01T00:00:00Z"

    def decode(self, value: Any, path: str) -> Any:
        if value is None:
            return self.zero()
        if not isinstance(value, str):
            raise GoDecodeError(f"{path}: {value!r} is not an RFC 3339 time")
        normal = go_time_text(value)
        if normal is None:
            raise GoDecodeError(f"{path}: {value!r} is not an RFC 3339 time")
        return normal

    def empty(self, value: Any) -> bool:
        return False  # omitempty never drops a struct


class GoAny(GoType):
    def decode(self, value: Any, path: str) -> Any:
        return value

    def empty(self, value: Any) -> bool:
        return value is None


class GoMap(GoType):
    def __init__(self, item: GoType) -> None:
        self.item = item

    def decode(self, value: Any, path: str) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise GoDecodeError(f"{path}: cannot unmarshal {go_kind(value)} into a Go map")
        return {k: self.item.decode(v, f"{path}.{k}") for k, v in value.items()}

    def encode(self, value: Any) -> Any:
        return None if value is None else {k: self.item.encode(v) for k, v in value.items()}

    def empty(self, value: Any) -> bool:
        return not value


class GoSlice(GoType):
    def __init__(self, item: GoType) -> None:
        self.item = item

    def decode(self, value: Any, path: str) -> Any:
        if value is None:
            return None
        if not isinstance(value, list):
            raise GoDecodeError(f"{path}: cannot unmarshal {go_kind(value)} into a Go slice")
        return [self.item.decode(v, f"{path}.{i}") for i, v in enumerate(value)]

    def encode(self, value: Any) -> Any:
        return None if value is None else [self.item.encode(v) for v in value]

    def empty(self, value: Any) -> bool:
        return not value


class GoStruct(GoType):
    def __init__(self, *fields: tuple[str, GoType, bool]) -> None:
        self.fields = fields

    def zero(self) -> Any:
        return {name: t.zero() for name, t, _ in self.fields}

    def decode(self, value: Any, path: str) -> Any:
        out = self.zero()
        if value is None:
            return out
        if not isinstance(value, dict):
            raise GoDecodeError(f"{path or 'the job'}: cannot unmarshal {go_kind(value)} into a Go struct")
        by_name = {name: (name, t) for name, t, _ in self.fields}
        folded = {name.casefold(): (name, t) for name, t, _ in reversed(self.fields)}
        for key, item in value.items():  # Go: an exact name first, else the first case-insensitive one
            match = by_name.get(key) or folded.get(key.casefold())
            if match is None:
                continue  # a key the struct does not know: dropped
            name, t = match
            out[name] = t.decode(item, f"{path}.{name}" if path else name)
        return out

    def encode(self, value: Any) -> Any:
        out: dict[str, Any] = {}
        for name, t, omitempty in self.fields:
            item = value[name]
            if omitempty and t.empty(item):
                continue
            out[name] = t.encode(item)
        return out

    def empty(self, value: Any) -> bool:
        return False


class GoPtr(GoType):
    def __init__(self, target: GoStruct) -> None:
        self.target = target

    def decode(self, value: Any, path: str) -> Any:
        return None if value is None else self.target.decode(value, path)

    def encode(self, value: Any) -> Any:
        return None if value is None else self.target.encode(value)

    def empty(self, value: Any) -> bool:
        return value is None


def go_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return f"number {value}"
    if isinstance(value, float):
        return f"number {value:g}" if value != int(value) else f"number {value}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"
