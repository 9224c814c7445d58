"""The shop's data (catalogue, FAQ and policies, orders) loaded from configs/shop/*.json.

Every fact the agent says comes from these objects; the files are the single place a shop edits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .text import normalize

DEFAULT_SHOP_DIR = Path(__file__).resolve().parents[2] / "configs" / "shop"


@dataclass
class SizeRange:
    size: str
    min_cm: int
    max_cm: int


@dataclass
class Product:
    id: str
    name: dict[str, str]
    the_name: dict[str, str]
    aliases: list[str]
    price: float
    colours: list[dict[str, str]]
    material: dict[str, str]
    sizes_by_height: list[SizeRange] = field(default_factory=list)
    dimensions_cm: list[float] | None = None
    water_resistance_m: int | None = None
    case_mm: float | None = None
    hypoallergenic: bool | None = None
    plural: bool = False

    def the(self, lang: str) -> str:
        """The name with its article ("the linen wrap dress", "os brincos de argola de prata")."""
        return self.the_name.get(lang) or self.the_name.get("en") or self.display_name(lang)

    def display_name(self, lang: str) -> str:
        return self.name.get(lang) or self.name["en"]

    def colour_names(self, lang: str) -> list[str]:
        return [c.get(lang) or c["en"] for c in self.colours]

    def size_for_height(self, cm: float) -> str | None:
        for r in self.sizes_by_height:
            if r.min_cm <= round(cm) <= r.max_cm:
                return r.size
        return None

    def match_terms(self) -> list[str]:
        """Normalised names and aliases, longest first so 'leather bag' wins over 'bag'."""
        terms = {normalize(n) for n in self.name.values()} | {normalize(a) for a in self.aliases}
        terms.add(normalize(self.id))
        return sorted(terms, key=len, reverse=True)


@dataclass
class Country:
    code: str
    name: dict[str, str]
    min_days: int
    max_days: int
    aliases: list[str]


@dataclass
class FaqEntry:
    id: str
    keywords: list[str]
    answer: dict[str, str]


@dataclass
class Order:
    id: str
    product: str
    colour: str
    status: str  # in_transit | delivered | preparing
    size: str | None = None
    carrier: str | None = None
    tracking: str | None = None
    expected_in_days: int | None = None
    ship_to: str | None = None


@dataclass
class Shop:
    name: str
    currency: str
    languages: tuple[str, ...]
    default_language: str
    products: list[Product]
    countries: list[Country]
    other_countries: list[str]
    return_window_days: int
    faq: list[FaqEntry]
    orders: dict[str, Order]

    def product(self, product_id: str) -> Product | None:
        return next((p for p in self.products if p.id == product_id), None)

    def colour_in(self, product: Product, colour_en: str, lang: str) -> str:
        for c in product.colours:
            if c["en"] == colour_en:
                return c.get(lang) or colour_en
        return colour_en


def load_shop(directory: str | Path | None = None) -> Shop:
    """Read catalog.json, faq.json and orders.json from `directory` (default configs/shop)."""
    d = Path(directory) if directory else DEFAULT_SHOP_DIR
    catalog = json.loads((d / "catalog.json").read_text(encoding="utf-8"))
    faq = json.loads((d / "faq.json").read_text(encoding="utf-8"))
    orders = json.loads((d / "orders.json").read_text(encoding="utf-8"))
    products = [
        Product(
            id=p["id"],
            name=p["name"],
            the_name=p.get("the_name", {}),
            aliases=p.get("aliases", []),
            price=p["price_usd"],
            colours=p.get("colours", []),
            material=p.get("material", {}),
            sizes_by_height=[
                SizeRange(s["size"], s["min"], s["max"]) for s in p.get("sizes_by_height_cm", [])
            ],
            dimensions_cm=p.get("dimensions_cm"),
            water_resistance_m=p.get("water_resistance_m"),
            case_mm=p.get("case_mm"),
            hypoallergenic=p.get("hypoallergenic"),
            plural=p.get("plural", False),
        )
        for p in catalog["products"]
    ]
    shipping = faq.get("shipping", {})
    countries = [
        Country(c["code"], c["name"], c["min_days"], c["max_days"], c.get("aliases", []))
        for c in shipping.get("countries", [])
    ]
    info = catalog.get("shop", {})
    return Shop(
        name=info.get("name", "our shop"),
        currency=info.get("currency", "USD"),
        languages=tuple(info.get("languages", ["en"])),
        default_language=info.get("default_language", "en"),
        products=products,
        countries=countries,
        other_countries=shipping.get("other_countries", []),
        return_window_days=faq.get("returns", {}).get("window_days", 30),
        faq=[FaqEntry(f["id"], f["keywords"], f["answer"]) for f in faq.get("faq", [])],
        orders={o["id"]: Order(**o) for o in orders["orders"]},
    )
