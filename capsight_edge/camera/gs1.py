"""One identity per barcode read: the GTIN-14 and the GS1 application identifiers (AIs).

A shopper's item can carry its number in many forms: an EAN-13 or UPC-A (12 or 13 digits), an
EAN-8, a zero-suppressed UPC-E (8 digits), a GS1 DataBar (AI 01 plus a GTIN-14), a GS1-128 or a
GS1 DataMatrix / QR holding an element string (AIs separated by the FNC1 character, GS, 0x1D),
or a QR holding a GS1 Digital Link URI (``https://id.example.com/01/09506000134352/10/AB1?17=
251231``). Catalogues, triggers, manifests and the sink compare the normalised ``gtin``: 14
digits, check digit verified. A number whose check digit is wrong is not a read.

What is parsed of the AIs: 01 (GTIN), 10 (batch), 17 (expiry, YYMMDD), 21 (serial), 310n (net
weight in kg with n decimals), and every other AI of the predefined-length table by its length,
kept as text under its AI.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from capsight_edge.errors import CapsightError

GS = "\x1d"
#: Longest element string / Digital Link URI accepted (a DataMatrix holds at most 3116 digits).
MAX_GS1_TEXT = 4096


class GS1Error(CapsightError):
    """A GS1 element string, HRI text or Digital Link that does not parse or fails a check."""


def check_digit(body: str) -> str:
    """The GS1 mod-10 check digit of ``body`` (the digits before the check digit)."""
    total = sum(int(c) * (3 if i % 2 == 0 else 1) for i, c in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


def check_digit_ok(digits: str) -> bool:
    return len(digits) >= 2 and digits.isdigit() and check_digit(digits[:-1]) == digits[-1]


def expand_upce(code: str) -> str:
    """UPC-E (8 digits: number system, 6 digits, check; or 6/7 digits without them) to the
    12-digit UPC-A it suppresses zeros of."""
    if len(code) == 6:
        code = "0" + code
    if len(code) not in (7, 8) or not code.isdigit() or code[0] not in "01":
        raise GS1Error(f"not a UPC-E: {code!r}")
    upca = code[0] + _upce_middle(code[1:7])
    return upca + (code[7] if len(code) == 8 else check_digit(upca))


def _upce_middle(d: str) -> str:
    last = d[5]
    if last in "012":
        return d[0:2] + last + "0000" + d[2:5]
    if last == "3":
        return d[0:3] + "00000" + d[3:5]
    if last == "4":
        return d[0:4] + "00000" + d[4]
    return d[0:5] + "0000" + last


def gtin14(digits: str) -> str:
    """A GTIN-8/12/13/14 padded to 14 digits; raises GS1Error on a wrong check digit."""
    if not digits.isdigit() or len(digits) not in (8, 12, 13, 14):
        raise GS1Error(f"not a GTIN: {digits[:20]!r}")
    if not check_digit_ok(digits):
        raise GS1Error(f"GTIN {digits} fails its check digit")
    return digits.zfill(14)


def same_gtin(a: str, b: str) -> bool:
    """Two codes name the same item (leading zeros and UPC-E zero suppression aside)."""
    return bool(a) and bool(b) and bool(_forms(a) & _forms(b))


def _forms(code: str) -> set[str]:
    """What a number can stand for: itself padded to 14 digits, and for 8 digits starting with
    0 or 1 also the UPC-A a UPC-E of those digits expands to (an EAN-8 looks the same)."""
    code = code.strip()
    if not code.isdigit():
        return {code}
    out = {code.zfill(14)}
    if len(code) == 8 and code[0] in "01":
        out.add(expand_upce(code).zfill(14))
    return out


# -- application identifiers ---------------------------------------------------------------------

#: Length of the AI itself, by its first two digits (GS1 General Specifications, figure 3.2-1).
_AI_LEN = {
    **{p: 2 for p in ("00", "01", "02", "03", "04", "10", "11", "12", "13", "15", "16", "17")},
    **{p: 2 for p in ("20", "21", "22", "30", "37", "90", "91", "92", "93", "94", "95", "96")},
    **{p: 2 for p in ("97", "98", "99")},
    **{p: 3 for p in ("23", "24", "25", "40", "41", "42", "71")},
    **{p: 4 for p in ("31", "32", "33", "34", "35", "36", "39", "43", "70", "72", "80", "81")},
    "82": 4,
}
#: Fixed data lengths (no FNC1 after them), by the AI's first two digits.
_FIXED = {
    "00": 18,
    "01": 14,
    "02": 14,
    "03": 14,
    "04": 16,
    "11": 6,
    "12": 6,
    "13": 6,
    "15": 6,
    "16": 6,
    "17": 6,
    "20": 2,
    **{p: 6 for p in ("31", "32", "33", "34", "35", "36")},
    "41": 13,
}
_MAX_VAR = 90  # longest variable-length AI data (AI 8200 is 70, 91-99 are 90)
_NAMES = {"01": "gtin", "10": "batch", "17": "expiry", "21": "serial"}


@dataclass(frozen=True)
class GS1Data:
    """The AIs of one code, in order, as text; the named ones are also typed."""

    ais: dict[str, str] = field(default_factory=dict)

    @property
    def gtin(self) -> str | None:
        return self.ais.get("01")

    @property
    def net_weight_kg(self) -> float | None:
        for ai, value in self.ais.items():
            if len(ai) == 4 and ai.startswith("310"):
                return int(value) / 10 ** int(ai[3])
        return None

    @property
    def expiry(self) -> str | None:
        v = self.ais.get("17")
        return _yymmdd(v) if v else None

    def named(self) -> dict[str, Any]:
        out: dict[str, Any] = {_NAMES[k]: v for k, v in self.ais.items() if k in _NAMES}
        if "expiry" in out:
            out["expiry"] = self.expiry
        if self.net_weight_kg is not None:
            out["net_weight_kg"] = self.net_weight_kg
        return out


def net_weight_kg(ais: dict[str, str]) -> float | None:
    """The net weight a code states (AI 310n: kg with n decimals), None when it states none."""
    return GS1Data(ais).net_weight_kg


def _yymmdd(v: str) -> str:
    """AI 17/15 date as ISO; day 00 means the last day of the month (GS1 rule)."""
    yy, mm, dd = int(v[0:2]), int(v[2:4]), int(v[4:6])
    year = 2000 + yy if yy < 51 else 1900 + yy  # GS1's sliding century, simplified to 1951-2050
    if not 1 <= mm <= 12:
        raise GS1Error(f"date {v}: month {mm}")
    if dd == 0:
        nxt = dt.date(year + mm // 12, mm % 12 + 1, 1)
        return (nxt - dt.timedelta(days=1)).isoformat()
    try:
        return dt.date(year, mm, dd).isoformat()
    except ValueError as exc:
        raise GS1Error(f"date {v}: {exc}") from None


def _ai_at(s: str, i: int) -> str:
    prefix = s[i : i + 2]
    n = _AI_LEN.get(prefix)
    if n is None or not s[i : i + n].isdigit() or i + n > len(s):
        raise GS1Error(f"unknown application identifier at {s[i : i + 4]!r}")
    return s[i : i + n]


def _check_value(ai: str, value: str) -> None:
    fixed = _FIXED.get(ai[:2])
    if fixed is not None and (len(value) != fixed or not value.isdigit()):
        raise GS1Error(f"AI {ai}: {value!r} is not {fixed} digits")
    if ai in ("01", "02", "00") and not check_digit_ok(value):
        raise GS1Error(f"AI {ai}: {value} fails its check digit")
    if ai[:2] in ("11", "12", "13", "15", "16", "17"):
        _yymmdd(value)
    if not value:
        raise GS1Error(f"AI {ai}: empty")


def parse_element_string(text: str) -> GS1Data:
    """AIs from a GS1 element string: fixed-length AIs run on, variable ones end at GS (FNC1)
    or at the end. A leading FNC1 or symbology identifier (``]C1``, ``]d2``, ``]Q3``, ``]e0``)
    is skipped."""
    if len(text) > MAX_GS1_TEXT:
        raise GS1Error(f"element string longer than {MAX_GS1_TEXT} characters")
    s = text
    if s[:1] == "]" and len(s) >= 3:
        s = s[3:]
    s = s.lstrip(GS)
    ais: dict[str, str] = {}
    i = 0
    while i < len(s):
        ai = _ai_at(s, i)
        i += len(ai)
        fixed = _FIXED.get(ai[:2])
        if fixed is not None:
            value = s[i : i + fixed]
            i += fixed
            if s[i : i + 1] == GS:
                i += 1  # an FNC1 after a fixed-length AI is allowed
        else:
            end = s.find(GS, i)
            end = len(s) if end < 0 else end
            value = s[i:end]
            if len(value) > _MAX_VAR:
                raise GS1Error(f"AI {ai}: value longer than {_MAX_VAR}")
            i = end + 1
        _check_value(ai, value)
        if ai in ais:
            raise GS1Error(f"AI {ai} twice")
        ais[ai] = value
    if not ais:
        raise GS1Error("no application identifier")
    return GS1Data(ais)


_HRI = re.compile(r"\((\d{2,4})\)([^()]*)")


def parse_hri(text: str) -> GS1Data:
    """AIs from human-readable text: ``(01)09506000134352(17)251231(10)AB1``."""
    if len(text) > MAX_GS1_TEXT:
        raise GS1Error(f"text longer than {MAX_GS1_TEXT} characters")
    parts = _HRI.findall(text)
    if not parts or "".join(f"({a}){v}" for a, v in parts) != text:
        raise GS1Error("not GS1 human-readable text")
    ais: dict[str, str] = {}
    for ai, value in parts:
        if _ai_at(ai + "0", 0) != ai:
            raise GS1Error(f"unknown application identifier ({ai})")
        _check_value(ai, value)
        ais[ai] = value
    return GS1Data(ais)


#: Short names some Digital Link URIs use instead of the numeric AIs (the GS1 DL 1.0 aliases).
_DL_ALIASES = {"gtin": "01", "lot": "10", "ser": "21", "exp": "17", "cpv": "22"}


def parse_digital_link(uri: str) -> GS1Data | None:
    """The AIs of a GS1 Digital Link URI, or None when the URI is not one (no ``/01/<gtin>``
    path). A Digital Link whose GTIN fails its check digit raises."""
    if len(uri) > MAX_GS1_TEXT:
        raise GS1Error(f"URI longer than {MAX_GS1_TEXT} characters")
    try:
        parsed = urllib.parse.urlsplit(uri)
    except ValueError:
        return None
    if parsed.scheme not in ("http", "https"):
        return None
    segs = [urllib.parse.unquote(p) for p in parsed.path.split("/") if p]
    keys = [_DL_ALIASES.get(p, p) for p in segs]
    if "01" not in keys:
        return None
    start = keys.index("01")
    pairs = keys[start:]
    if len(pairs) % 2:
        raise GS1Error("Digital Link path: an AI without its value")
    ais: dict[str, str] = {}
    for k in range(0, len(pairs), 2):
        ai, value = pairs[k], segs[start + k + 1]
        if ai == "01":
            value = gtin14(value) if len(value) != 14 else value
        _ai_at(ai + "0", 0)
        _check_value(ai, value)
        ais[ai] = value
    for key, value in urllib.parse.parse_qsl(parsed.query):
        ai = _DL_ALIASES.get(key, key)
        if ai.isdigit() and 2 <= len(ai) <= 4 and ai not in ais:
            try:
                _ai_at(ai + "0", 0)
            except GS1Error:
                continue  # a query key that is not an AI (e.g. linkType) is not ours
            _check_value(ai, value)
            ais[ai] = value
    return GS1Data(ais)


# -- one identity per read ----------------------------------------------------------------------

#: Symbology names as capsight reports them (the profile's ``barcode_formats`` uses these).
EAN_UPC = ("EAN-13", "UPC-A", "EAN-8", "UPC-E")
DATABAR = ("DataBar", "DataBarLimited", "DataBarExpanded")
ALL_FORMATS = (*EAN_UPC, "Code128", *DATABAR, "QRCode", "DataMatrix")


@dataclass(frozen=True)
class Identity:
    symbology: str
    text: str  # what the code holds (for GS1 element strings: with GS as FNC1)
    gtin: str | None = None
    ais: dict[str, str] = field(default_factory=dict)
    addon: str | None = None


def identify(symbology: str, text: str, *, gs1: bool = False, addon: str | None = None) -> Identity:
    """The read's identity; raises GS1Error when a check digit (or a GS1 structure) is wrong,
    which means the read is not a read. ``gs1``: the decoder saw FNC1 in first position."""
    if symbology in EAN_UPC:
        digits = text
        if symbology == "UPC-E" and len(text) <= 8:
            digits = expand_upce(text)  # the printed digits; some decoders give the UPC-A
        elif symbology == "EAN-13" and len(text) == 13 and text[0] == "0":
            symbology, digits = "UPC-A", text
        if addon is not None and not (addon.isdigit() and len(addon) in (2, 5)):
            addon = None
        return Identity(symbology, text, gtin14(digits), {}, addon)
    if symbology in DATABAR or gs1:
        data = (
            parse_hri(text)
            if text.startswith("(")
            else parse_element_string(text)
            if text[:1].isdigit() or text[:1] in (GS, "]")
            else None
        )
        if data is None:
            raise GS1Error(f"{symbology}: GS1 content expected, got {text[:20]!r}")
        return Identity(symbology, text, data.gtin, data.ais)
    if symbology in ("QRCode", "DataMatrix") and text[:4].lower() == "http":
        dl = parse_digital_link(text)
        if dl is not None:
            return Identity(symbology, text, dl.gtin, dl.ais)
    return Identity(symbology, text)
