"""A generated product catalogue: each SKU has a valid EAN-13 / UPC-A code, a weight and a look.

Everything is deterministic from the seed, so the camera scene, the load cells and (later) the
training data agree on what each product is.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import cached_property
from typing import Any

# EAN-13 element patterns (1 = bar). R is the complement of L, G the reverse of R.
_L = (
    "0001101",
    "0011001",
    "0010011",
    "0111101",
    "0100011",
    "0110001",
    "0101111",
    "0111011",
    "0110111",
    "0001011",
)
_R = tuple("".join("1" if b == "0" else "0" for b in p) for p in _L)
_G = tuple(p[::-1] for p in _R)
_PARITY = (
    "LLLLLL",
    "LLGLGG",
    "LLGGLG",
    "LLGGGL",
    "LGLLGG",
    "LGGLLG",
    "LGGGLL",
    "LGLGLG",
    "LGLGGL",
    "LGGLGL",
)
QUIET_MODULES = 9


def ean_check_digit(first12: str) -> str:
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(first12))
    return str((10 - total % 10) % 10)


def ean13_modules(code: str) -> str:
    """The 95 modules of an EAN-13 symbol (UPC-A: a 12-digit code, rendered with a leading 0)."""
    if len(code) == 12:
        code = "0" + code
    if len(code) != 13 or not code.isdigit() or ean_check_digit(code[:12]) != code[12]:
        raise ValueError(f"{code!r} is not a valid EAN-13 code")
    parity = _PARITY[int(code[0])]
    left = "".join((_L if p == "L" else _G)[int(d)] for p, d in zip(parity, code[1:7], strict=True))
    right = "".join(_R[int(d)] for d in code[7:])
    return "101" + left + "01010" + right + "101"


def render_ean13(code: str, module_px: int = 3, height_px: int = 80) -> Any:
    """A grey (uint8) image of the symbol with quiet zones: bars 0, spaces 255."""
    import numpy as np

    modules = ean13_modules(code)
    row = np.array([0 if m == "1" else 255 for m in "0" * 0 + modules], dtype=np.uint8)
    quiet = np.full(QUIET_MODULES, 255, dtype=np.uint8)
    row = np.concatenate([quiet, row, quiet])
    img = np.repeat(row, module_px)[None, :].repeat(height_px, axis=0)
    return np.ascontiguousarray(img)


#: Patterns printed on a pack (in its accent colour). No plain vertical stripes: on a pack's
#: back they could pass for a barcode.
PATTERNS = ("stripes", "diagonal", "checks", "dots", "band", "frame", "chevrons")
#: The brand mark in the pack's top corner.
LOGOS = ("circle", "triangle", "square", "diamond", "star", "ring")


@dataclass(frozen=True)
class Product:
    """One SKU of the fleet's catalogue. Its look (colours, pattern, logo) tells it apart from
    every other product in clean light, on the front and on the back; only the front carries the
    barcode."""

    sku: str
    code: str  # EAN-13 (13 digits) or UPC-A (12 digits)
    symbology: str  # "EAN-13" or "UPC-A"
    name: str
    weight_g: float
    color_bgr: tuple[int, int, int]
    size_px: tuple[int, int]  # width, height at the basket's scale
    accent_bgr: tuple[int, int, int] = (255, 255, 255)
    pattern: str = "band"
    logo: str = "circle"

    @property
    def gtin14(self) -> str:
        """The code as a GTIN-14 (zero-padded), the form catalogues compare."""
        return self.code.rjust(14, "0")

    @cached_property
    def front(self) -> Any:
        """The package's face with its barcode label (BGR uint8)."""
        return _package(self, with_barcode=True)

    @cached_property
    def back(self) -> Any:
        """The package's back: no barcode in view (an unscanned item)."""
        return _package(self, with_barcode=False)


def _pattern(img: Any, kind: str, color: tuple[int, int, int]) -> None:
    """Print ``kind`` in ``color`` over ``img`` (the pack above its label)."""
    import cv2

    h, w = img.shape[:2]
    if kind == "stripes":
        for y in range(6, h, 22):
            cv2.rectangle(img, (0, y), (w - 1, min(h - 1, y + 9)), color, -1)
    elif kind == "diagonal":
        for x in range(-h, w, 26):
            cv2.line(img, (x, h - 1), (x + h, 0), color, 8)
    elif kind == "checks":
        for y in range(0, h, 24):
            for x in range((y // 24 % 2) * 24, w, 48):
                cv2.rectangle(img, (x, y), (x + 23, min(h - 1, y + 23)), color, -1)
    elif kind == "dots":
        for y in range(14, h - 6, 28):
            for x in range(14 + (y // 28 % 2) * 14, w - 6, 28):
                cv2.circle(img, (x, y), 7, color, -1)
    elif kind == "band":
        cv2.rectangle(img, (0, h // 3), (w - 1, (2 * h) // 3), color, -1)
    elif kind == "frame":
        cv2.rectangle(img, (8, 8), (w - 9, h - 4), color, 12)
    elif kind == "chevrons":
        for y in range(0, h + 30, 30):
            cv2.line(img, (0, y), (w // 2, y - 18), color, 7)
            cv2.line(img, (w // 2, y - 18), (w - 1, y), color, 7)


def _logo(img: Any, kind: str, cx: int, cy: int, r: int, color: tuple[int, int, int]) -> None:
    import cv2
    import numpy as np

    if kind == "circle":
        cv2.circle(img, (cx, cy), r, color, -1)
    elif kind == "ring":
        cv2.circle(img, (cx, cy), r, color, max(3, r // 3))
    elif kind == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
    else:
        if kind == "triangle":
            pts = [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
        elif kind == "diamond":
            pts = [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
        else:  # star
            pts = []
            for i in range(10):
                a = -math.pi / 2 + i * math.pi / 5
                rr = r if i % 2 == 0 else r * 0.45
                pts.append((int(cx + rr * math.cos(a)), int(cy + rr * math.sin(a))))
        cv2.fillPoly(img, [np.array(pts, np.int32)], color)


def _package(p: Product, *, with_barcode: bool) -> Any:
    import cv2
    import numpy as np

    w, h = p.size_px
    img = np.empty((h, w, 3), np.uint8)
    img[:] = p.color_bgr
    label_h = max(30, h // 3) + 16
    _pattern(img[: h - label_h], p.pattern, p.accent_bgr)  # a view: the label stays clear
    shade = np.linspace(0.85, 1.1, w, dtype=np.float32)[None, :, None]
    img = np.clip(img.astype(np.float32) * shade, 0, 255).astype(np.uint8)
    cv2.rectangle(img, (0, 0), (w - 1, h - 1), (30, 30, 30), 2)
    dark = sum(p.color_bgr) < 380
    text_color = (255, 255, 255) if dark else (20, 20, 20)
    mark = (250, 250, 250) if dark else (15, 15, 15)
    # The brand mark sits on the right on the front and on the left on the back (it wraps
    # round the pack), always on the pack's base colour.
    r = 16
    cx = w - r - 12 if with_barcode else r + 12
    cv2.circle(img, (cx, r + 12), r + 5, p.color_bgr, -1)
    _logo(img, p.logo, cx, r + 12, r, mark)
    tx = 6 if with_barcode else 2 * r + 30
    cv2.putText(
        img, p.name[:12], (tx, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.55, text_color, 1, cv2.LINE_AA
    )
    if with_barcode:
        code = render_ean13(p.code, module_px=2, height_px=max(30, h // 3))
        bh, bw = code.shape
        if bw + 8 <= w:
            x0, y0 = (w - bw) // 2, h - bh - 8
            img[y0 : y0 + bh, x0 : x0 + bw] = code[:, :, None]
    else:
        cv2.putText(
            img, "net wt", (6, h - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, text_color, 1, cv2.LINE_AA
        )
    return img


HUES = 12  # colour families round the wheel, 30 degrees apart
SHADES = (0.85, 0.5)  # a bright and a dark pack of each colour


def _looks(
    n: int, rng: random.Random
) -> list[tuple[str, tuple[int, int, int], tuple[int, int, int]]]:
    """``n`` distinct looks: (pattern, base colour, accent colour). Every (pattern, colour
    family, shade) is dealt once before any repeats (168 of them), so two products with the
    same pattern differ in colour by at least a family or a shade."""
    import colorsys

    deck = [(pat, h, v) for pat in PATTERNS for h in range(HUES) for v in range(len(SHADES))]
    rng.shuffle(deck)
    out = []
    for i in range(n):
        pattern, h, v = deck[i % len(deck)]
        hue = (h + 0.5 * (i // len(deck)) + rng.uniform(-0.08, 0.08)) / HUES % 1.0
        val = SHADES[v]
        r, g, b = colorsys.hsv_to_rgb(hue, 0.8, val)
        ar, ag, ab = colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.9, 0.95 if val < 0.7 else 0.3)
        out.append(
            (
                pattern,
                (int(b * 255), int(g * 255), int(r * 255)),
                (int(ab * 255), int(ag * 255), int(ar * 255)),
            )
        )
    return out


_NAMES = (
    "oat milk",
    "coffee",
    "pasta",
    "rice",
    "cereal",
    "tea",
    "cocoa",
    "biscuits",
    "crackers",
    "soap",
    "detergent",
    "tomatoes",
    "beans",
    "soup",
    "flour",
    "sugar",
)


class Catalogue:
    """``n`` products from ``seed``; EAN-13 and UPC-A mixed (UPC-A for about a fifth).

    A simulated fleet shares one catalogue (the profile's ``[sim] catalogue_seed``): ``sku-0007``
    is the same product, with the same code, weight and look, on every cart. Every product has
    its own look (see :func:`_looks`), and a brand mark (logo) besides."""

    def as_json(self) -> str:
        """The catalogue as the sink imports it (``capsight-sink catalogue import``): SKU, GTIN
        (the code as printed), name and weight as sold (a retailer's catalogue has it: the
        self-checkout's weight check). Nothing of the look: the sink never renders."""
        import json

        return json.dumps(
            {
                "products": [
                    {"sku": p.sku, "gtin": p.code, "name": p.name, "weight_g": p.weight_g}
                    for p in self.products
                ]
            }
        )

    def __init__(self, n: int = 200, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.seed = seed
        self.products: list[Product] = []
        seen: set[str] = set()
        looks = _looks(n, random.Random(seed + 1))
        while len(self.products) < n:
            upc = rng.random() < 0.2
            # An EAN-13 that starts with 0 *is* a UPC-A: keep the two apart.
            body = "".join(str(rng.randrange(10)) for _ in range(11 if upc else 12))
            if not upc and body[0] == "0":
                continue
            first12 = ("0" + body) if upc else body
            code13 = first12 + ean_check_digit(first12)
            if code13 in seen:
                continue
            seen.add(code13)
            code = code13[1:] if upc else code13
            i = len(self.products)
            pattern, base, accent = looks[i]
            logo = LOGOS[i % len(LOGOS)]
            self.products.append(
                Product(
                    sku=f"sku-{i:04d}",
                    code=code,
                    symbology="UPC-A" if upc else "EAN-13",
                    name=rng.choice(_NAMES),
                    weight_g=round(rng.uniform(20, 2000), 1),
                    color_bgr=base,
                    size_px=(rng.randrange(250, 310), rng.randrange(150, 210)),
                    accent_bgr=accent,
                    pattern=pattern,
                    logo=logo,
                )
            )
        self._by_sku = {p.sku: p for p in self.products}
        self._by_code = {p.code: p for p in self.products}

    def __len__(self) -> int:
        return len(self.products)

    def by_sku(self, sku: str) -> Product:
        return self._by_sku[sku]

    def by_code(self, code: str) -> Product | None:
        """Look a decoded text up; a UPC-A read as EAN-13 (leading 0) is found too."""
        return self._by_code.get(code) or (
            self._by_code.get(code[1:]) if len(code) == 13 and code[0] == "0" else None
        )

    def pick(self, rng: random.Random) -> Product:
        return rng.choice(self.products)
