"""The fleet's product catalogue as the sink knows it: SKU, GTIN, name and, where the retailer
has it, the weight as sold (``weight_g``, what a self-checkout's weight check compares).
Barcode-as-label maps a confirmed read through it; pre-labelling weighs the teacher's answer at a
weight event by how well each product's weight explains the scale's change; exports list its
SKUs as the classes.

``DIR/catalogue.json`` (``capsight-sink catalogue import FILE --data DIR``)::

    {"products": [{"sku": "sku-0001", "gtin": "4006381333931", "name": "...",
                   "weight_g": 412.0}, ...]}

GTINs are compared as GTIN-14 (zero-padded), so a UPC-A read matches its EAN-13 form.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from capsight_edge.camera.gs1 import GS1Error, expand_upce
from capsight_edge.camera.gs1 import gtin14 as _gtin14

MAX_PRODUCTS = 100_000


class _Product(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sku: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    gtin: str = Field(pattern=r"^\d{8,14}$")
    name: str = Field(default="", max_length=200)
    weight_g: float | None = Field(default=None, gt=0, le=100_000, allow_inf_nan=False)


class _File(BaseModel):
    products: list[_Product] = Field(max_length=MAX_PRODUCTS)


def gtin14(code: str) -> str | None:
    """The code as a GTIN-14 (a UPC-E's 8 printed digits expanded), None when it is not one."""
    digits = code.strip()
    if not digits.isdigit() or not 8 <= len(digits) <= 14:
        return None
    try:
        return _gtin14(digits)
    except GS1Error:
        if len(digits) == 8:
            with contextlib.suppress(GS1Error):
                return _gtin14(expand_upce(digits))
        return digits.zfill(14)  # a catalogue's own number, check digit or not


@dataclass(frozen=True)
class Product:
    sku: str
    gtin: str
    name: str
    weight_g: float | None = None


class Catalogue:
    def __init__(self, products: list[Product]) -> None:
        self.products = products
        self._by_gtin = {gtin14(p.gtin): p for p in products}
        self.skus = [p.sku for p in products]
        self.weights = {p.sku: p.weight_g for p in products if p.weight_g is not None}
        if len(set(self.skus)) != len(self.skus):
            raise ValueError("the catalogue names a SKU twice")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Catalogue:
        data = _File.model_validate_json(Path(path).read_bytes())
        return cls([Product(p.sku, p.gtin, p.name, p.weight_g) for p in data.products])

    def gtins(self) -> dict[str, str]:
        """SKU -> GTIN-14 (what a dataset manifest and a model card list)."""
        return {p.sku: gtin14(p.gtin) or p.gtin for p in self.products}

    def by_code(self, code: str) -> Product | None:
        key = gtin14(code)
        return self._by_gtin.get(key) if key else None

    def to_json(self) -> str:
        return json.dumps(
            {
                "products": [
                    {"sku": p.sku, "gtin": p.gtin, "name": p.name}
                    | ({"weight_g": p.weight_g} if p.weight_g is not None else {})
                    for p in self.products
                ]
            }
        )


def catalogue_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(os.path.expanduser(data_dir)) / "catalogue.json"
