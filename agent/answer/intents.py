"""Keyword intents, product and country spotting on normalised text (all three languages at once).

Speech-to-text may mix languages or misspell, so every language's keywords are tried on every
question; the longest matching phrases count most. Shops extend FAQ keywords in faq.json.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from .shop import Country, FaqEntry, Product, Shop
from .text import contains_phrase, normalize

KEYWORDS: dict[str, list[str]] = {
    "price": [
        "price",
        "prices",
        "cost",
        "costs",
        "how much",
        "pricing",
        "expensive",
        "cheap",
        "preco",
        "precos",
        "quanto custa",
        "quanto custam",
        "quanto e",
        "custa",
        "custam",
        "valor",
        "caro",
        "barato",
        "precio",
        "precios",
        "cuanto cuesta",
        "cuanto cuestan",
        "cuanto vale",
        "cuesta",
        "cuestan",
        "cuanto es",
        "dollars",
        "dolares",
    ],
    "colours": [
        "color",
        "colors",
        "colour",
        "colours",
        "shades",
        "cor",
        "cores",
        "colores",
        "what colors",
        "que cores",
        "que colores",
        "which colours",
        "come in",
        "comes in",
        "vem em",
        "vem na cor",
        "viene en",
        "vienen en",
    ],
    "material": [
        "material",
        "materials",
        "made of",
        "made from",
        "fabric",
        "genuine",
        "real leather",
        "real silver",
        "sterling",
        "nickel",
        "allergic",
        "allergy",
        "allergies",
        "hypoallergenic",
        "sensitive ears",
        "sensitive skin",
        "feito de",
        "feita de",
        "feitos de",
        "tecido",
        "materiais",
        "alergia",
        "alergias",
        "alergico",
        "alergica",
        "niquel",
        "hipoalergenico",
        "hipoalergenicos",
        "hecho de",
        "hechos de",
        "hecha de",
        "tela",
        "plata de ley",
        "cuero genuino",
        "sapphire",
        "safira",
        "zafiro",
        "glass",
        "vidro",
        "cristal",
        "de que e",
        "de que son",
        "de que es",
        "made",
        "hecho",
        "hecha",
        "feito",
        "feita",
        "feitos",
        "couro legitimo",
        "prata de verdade",
        "es de cuero",
        "e de couro",
        "is it leather",
        "is it real",
        "es de plata",
        "e de prata",
    ],
    "size": [
        "size",
        "sizes",
        "what size",
        "which size",
        "tall",
        "height",
        "cm",
        "centimeters",
        "centimetres",
        "feet",
        "foot",
        "inches",
        "tamanho",
        "tamanhos",
        "altura",
        "meco",
        "tamano",
        "talla",
        "tallas",
        "mido",
        "estatura",
        "centimetros",
        "pes",
        "pies",
        "polegadas",
        "pulgadas",
        "should i get",
        "devo comprar",
        "debo comprar",
    ],
    "dimensions": [
        "dimensions",
        "how big",
        "measurements",
        "how large",
        "dimensoes",
        "medidas",
        "qual o tamanho da bolsa",
        "dimensiones",
        "que tan grande",
        "cuanto mide",
        "quanto mede",
        "laptop",
        "millimeters",
        "millimetres",
        "mm",
        "case size",
    ],
    "water": [
        "water",
        "waterproof",
        "water resistant",
        "swim",
        "swimming",
        "shower",
        "dive",
        "diving",
        "agua",
        "prova d agua",
        "prova de agua",
        "nadar",
        "mergulhar",
        "mergulho",
        "chuva",
        "resistente al agua",
        "sumergible",
        "resistant",
        "resistente",
        "bucear",
        "piscina",
        "pool",
        "rain",
    ],
    "shipping": [
        "shipping",
        "ship",
        "ships",
        "delivery",
        "deliver",
        "arrive",
        "how long",
        "send",
        "sending",
        "envio",
        "frete",
        "entrega",
        "entregar",
        "chegar",
        "chega",
        "demora",
        "quanto tempo",
        "enviar",
        "enviam",
        "mandar",
        "envian",
        "tarda",
        "tardan",
        "llegar",
        "llega",
        "cuanto tiempo",
        "mandan",
        "envios",
        "prazo",
        "plazo",
        "dias",
        "days",
    ],
    "returns": [
        "return",
        "returns",
        "refund",
        "refunds",
        "exchange",
        "send back",
        "money back",
        "devolucao",
        "devolucoes",
        "devolver",
        "reembolso",
        "troca",
        "trocar",
        "devolucion",
        "devoluciones",
        "cambio",
        "cambiar",
        "regresar",
        "return policy",
        "politica",
    ],
    "not_as_pictured": [
        "not as pictured",
        "different colour",
        "different color",
        "wrong colour",
        "wrong color",
        "looks different",
        "different from the photo",
        "different from the picture",
        "not like the photo",
        "not like the picture",
        "not what i ordered",
        "wrong item",
        "another colour",
        "another color",
        "diferente da foto",
        "cor errada",
        "cor diferente",
        "outra cor",
        "nao e como na foto",
        "diferente do anuncio",
        "diferente de la foto",
        "color equivocado",
        "color diferente",
        "otro color",
        "no es como en la foto",
        "no se parece",
        "as pictured",
        "como na foto",
        "como en la foto",
        "the photo",
        "the picture",
        "na foto",
        "en la foto",
        "is different",
        "e diferente",
        "es diferente",
        "veio diferente",
        "llego diferente",
        "came different",
        "different from what",
    ],
    "damaged": [
        "damaged",
        "broken",
        "broke",
        "defective",
        "scratched",
        "torn",
        "cracked",
        "danificado",
        "danificada",
        "danificados",
        "quebrado",
        "quebrada",
        "quebrados",
        "estragado",
        "estragada",
        "com defeito",
        "rasgado",
        "rasgada",
        "arranhado",
        "trincado",
        "danado",
        "danada",
        "danados",
        "roto",
        "rota",
        "rotos",
        "defectuoso",
        "rayado",
        "dano",
    ],
    "order_status": [
        "order",
        "my order",
        "where is",
        "status",
        "tracking",
        "track",
        "shipped yet",
        "pedido",
        "meu pedido",
        "onde esta",
        "rastreio",
        "rastreamento",
        "rastrear",
        "mi pedido",
        "donde esta",
        "seguimiento",
        "estado",
        "encomenda",
        "compra",
    ],
    "human": [
        "human",
        "real person",
        "a person",
        "talk to someone",
        "speak to someone",
        "talk to",
        "speak to",
        "call me",
        "call back",
        "callback",
        "representative",
        "manager",
        "atendente",
        "humano",
        "pessoa",
        "alguem",
        "falar com",
        "me ligue",
        "me ligar",
        "ligar para mim",
        "retorno",
        "persona",
        "alguien",
        "hablar con",
        "llamame",
        "llamar",
        "llamada",
        "representante",
        "agente",
    ],
    "catalog": [
        "what do you sell",
        "products",
        "catalog",
        "catalogue",
        "what do you have",
        "produtos",
        "catalogo",
        "o que voces vendem",
        "o que vendem",
        "productos",
        "que venden",
        "que tienen",
    ],
    "greeting": [
        "hello",
        "hi",
        "hey",
        "good morning",
        "ola",
        "oi",
        "bom dia",
        "boa tarde",
        "hola",
        "buenos dias",
        "buenas tardes",
    ],
    "thanks": ["thanks", "thank you", "obrigado", "obrigada", "valeu", "gracias"],
    "yes": [
        "yes",
        "yeah",
        "yep",
        "sure",
        "please do",
        "ok",
        "okay",
        "sim",
        "claro",
        "pode",
        "quero",
        "por favor",
        "si",
        "vale",
        "de acuerdo",
        "please",
        "yes please",
    ],
    "no": ["no", "nope", "no thanks", "nao", "nao obrigado", "no gracias", "not now"],
}

# words that say which kind of ticket the buyer wants
WANTS_REFUND = [
    "refund",
    "money back",
    "reembolso",
    "dinheiro de volta",
    "devolucion del dinero",
    "mi dinero",
    "meu dinheiro",
    "devolver el dinero",
    "return it",
    "devolver",
]
WANTS_EXCHANGE = [
    "exchange",
    "replacement",
    "replace",
    "new one",
    "another one",
    "troca",
    "trocar",
    "substituir",
    "substituicao",
    "outro",
    "cambio",
    "cambiar",
    "reemplazo",
    "reemplazar",
    "otro",
    "swap",
]
REQUEST_WORDS = [
    "i want",
    "i would like",
    "i'd like",
    "i need",
    "please",
    "can you",
    "can i",
    "open",
    "start",
    "quero",
    "gostaria",
    "preciso",
    "pode",
    "posso",
    "abrir",
    "quiero",
    "quisiera",
    "necesito",
    "me gustaria",
    "puedes",
    "puedo",
    "abre",
]

PRODUCT_INTENTS = ("price", "colours", "material", "size", "dimensions", "water")


@dataclass
class Parsed:
    norm: str
    scores: dict[str, float] = field(default_factory=dict)
    products: list[Product] = field(default_factory=list)
    countries: list[Country] = field(default_factory=list)
    other_country: str | None = None
    faq: FaqEntry | None = None
    faq_score: float = 0.0

    def has(self, intent: str) -> bool:
        return self.scores.get(intent, 0.0) > 0


def phrase_score(norm_text: str, phrases: list[str]) -> float:
    """Sum of the word counts of the phrases present (longer phrases weigh more)."""
    return float(sum(len(p.split()) for p in phrases if contains_phrase(norm_text, p)))


def any_phrase(norm_text: str, phrases: list[str]) -> bool:
    return any(contains_phrase(norm_text, normalize(p)) for p in phrases)


def find_products(norm_text: str, shop: Shop) -> list[Product]:
    """Products named in the text, exact terms first, then close misspellings of one-word names."""
    found: list[tuple[int, Product]] = []
    for product in shop.products:
        for term in product.match_terms():
            pos = _find(norm_text, term)
            if pos >= 0:
                found.append((pos, product))
                break
    if not found:
        vocab = {
            t: p for p in shop.products for t in p.match_terms() if " " not in t and len(t) > 3
        }
        for i, tok in enumerate(norm_text.split()):
            if len(tok) < 4:
                continue
            close = difflib.get_close_matches(tok, vocab, n=1, cutoff=0.8)
            if close:
                found.append((i, vocab[close[0]]))
    seen: list[Product] = []
    for _, p in sorted(found, key=lambda x: x[0]):
        if p not in seen:
            seen.append(p)
    return seen


def _find(norm_text: str, term: str) -> int:
    import re

    m = re.search(rf"(?<![a-z0-9]){re.escape(term)}(?![a-z0-9])", norm_text)
    return m.start() if m else -1


def find_countries(norm_text: str, shop: Shop) -> tuple[list[Country], str | None]:
    found = [
        c
        for c in shop.countries
        if any(contains_phrase(norm_text, normalize(a)) for a in c.aliases)
    ]
    other = next(
        (o for o in shop.other_countries if contains_phrase(norm_text, normalize(o))), None
    )
    return found, other


def parse(text: str, shop: Shop) -> Parsed:
    norm = normalize(text)
    parsed = Parsed(norm=norm)
    for intent, phrases in KEYWORDS.items():
        score = phrase_score(norm, phrases)
        if score:
            parsed.scores[intent] = score
    parsed.products = find_products(norm, shop)
    parsed.countries, parsed.other_country = find_countries(norm, shop)
    best: tuple[float, FaqEntry | None] = (0.0, None)
    for entry in shop.faq:
        score = phrase_score(norm, [normalize(k) for k in entry.keywords])
        if score > best[0]:
            best = (score, entry)
    parsed.faq_score, parsed.faq = best
    return parsed


SOCIAL_INTENTS = ("greeting", "thanks", "yes", "no")


def asks_something(text: str, shop: Shop, social: bool = True) -> bool:
    """Does the text name anything the engine can answer about (an intent, a product, a
    country, an FAQ entry)? "Okay." and "uh-huh" do not; "the black one?" may not either.
    `social`: whether a greeting, thanks, yes or no counts (over the agent's voice they are
    acknowledgements, not questions)."""
    parsed = parse(text, shop)
    intents = [i for i in parsed.scores if social or i not in SOCIAL_INTENTS]
    return bool(intents or parsed.products or parsed.countries or parsed.faq)
