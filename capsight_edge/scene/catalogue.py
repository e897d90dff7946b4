"""A generated product catalogue: each SKU has a valid EAN-13 / UPC-A code, a weight and a look.

Everything is deterministic from the seed, so the camera scene, the load cells and (later) the
training data agree on what each product is.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Product:
    sku: str
    code: str  # EAN-13 (13 digits) or UPC-A (12 digits)
    symbology: str  # "EAN-13" or "UPC-A"
    name: str
    weight_g: float
    color_bgr: tuple[int, int, int]
    size_px: tuple[int, int]  # width, height at the basket's scale

    @cached_property
    def front(self) -> Any:
        """The package's face with its barcode label (BGR uint8)."""
        return _package(self, with_barcode=True)

    @cached_property
    def back(self) -> Any:
        """The package's back: no barcode in view (an unscanned item)."""
        return _package(self, with_barcode=False)


def _package(p: Product, *, with_barcode: bool) -> Any:
    import cv2
    import numpy as np

    w, h = p.size_px
    img = np.empty((h, w, 3), np.uint8)
    img[:] = p.color_bgr
    shade = np.linspace(0.85, 1.1, w, dtype=np.float32)[None, :, None]
    img = np.clip(img.astype(np.float32) * shade, 0, 255).astype(np.uint8)
    cv2.rectangle(img, (0, 0), (w - 1, h - 1), (30, 30, 30), 2)
    text_color = (255, 255, 255) if sum(p.color_bgr) < 380 else (20, 20, 20)
    cv2.putText(
        img, p.name[:14], (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.55, text_color, 1, cv2.LINE_AA
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
    """``n`` products from ``seed``; EAN-13 and UPC-A mixed (UPC-A for about a fifth)."""

    def __init__(self, n: int = 200, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.products: list[Product] = []
        seen: set[str] = set()
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
            self.products.append(
                Product(
                    sku=f"sku-{i:04d}",
                    code=code,
                    symbology="UPC-A" if upc else "EAN-13",
                    name=rng.choice(_NAMES),
                    weight_g=round(rng.uniform(20, 2000), 1),
                    color_bgr=(
                        rng.randrange(30, 230),
                        rng.randrange(30, 230),
                        rng.randrange(30, 230),
                    ),
                    size_px=(rng.randrange(250, 310), rng.randrange(150, 210)),
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
