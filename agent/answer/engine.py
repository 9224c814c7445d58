"""The grounded answer engine: every sentence comes from the shop's data or a tool result.

No language model is involved. Intents come from keywords (intents.py), numbers and heights from
numbers.py, replies from per-language templates (templates.py). When nothing fits, the engine says
it is not sure, in the buyer's language, and offers a callback from a person (a ticket).
"""

from __future__ import annotations

import re
import time
from typing import Any

from .base import Answer, ConversationState, ToolCall
from .intents import (
    PRODUCT_INTENTS,
    REQUEST_WORDS,
    WANTS_EXCHANGE,
    WANTS_REFUND,
    Parsed,
    any_phrase,
    parse,
)
from .numbers import find_numbers, parse_height_cm
from .shop import Product, Shop
from .templates import T, join_list, render
from .text import guess_language
from .tools import ShopTools


class _Reply:
    """Sentences and side effects gathered while answering one turn."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self.sentences: list[str] = []
        self.intent = "not_sure"
        self.tool_calls: list[ToolCall] = []
        self.confident = True
        self.offered_human = False

    def say(self, key: str, plural: bool = False, **fields: Any) -> None:
        sentence = render(key, self.lang, plural, **fields)
        if sentence not in self.sentences:
            self.sentences.append(sentence)


class GroundedEngine:
    """Answers from catalogue, FAQ, orders and tools; never invents a fact."""

    def __init__(self, shop: Shop, tools: ShopTools, translator: Any = None) -> None:
        self.shop = shop
        self.tools = tools
        self.translator = translator  # agent.translate.Translator or None, for ticket reasons

    # -- entry point ---------------------------------------------------------------------------

    def answer(self, text: str, state: ConversationState, language: str | None = None) -> Answer:
        t0 = time.perf_counter()
        lang = self.choose_language(text, language, state)
        state.language = lang
        state.turns += 1
        parsed = parse(text, self.shop)
        numbers = find_numbers(text, lang)
        order_id = next((n for n in numbers if n in self.shop.orders), None)
        if order_id is None:
            order_id = next((n for n in numbers if len(n) == 5), None)
        height = parse_height_cm(text, lang)
        if parsed.products:
            state.product_id = parsed.products[0].id
        t1 = time.perf_counter()
        reply = _Reply(lang)
        self._dispatch(text, parsed, order_id, height, state, reply)
        if not reply.sentences:
            self._not_sure(text, state, reply)
        t2 = time.perf_counter()
        return Answer(
            text=" ".join(reply.sentences),
            language=lang,
            intent=reply.intent,
            tool_calls=reply.tool_calls,
            product_id=state.product_id,
            confident=reply.confident,
            offered_human=reply.offered_human,
            timings_ms={"understand": (t1 - t0) * 1e3, "respond": (t2 - t1) * 1e3},
        )

    def speech_samples(self, lang: str) -> list[str]:
        """Sentences this engine's answers in `lang` start like, for the voice to prepare their
        first words ahead (agent/audio/kokoro_tts.py `prepare`): each product's price answer
        (its name opens every answer about it) and every sentence template as written, slots
        and all (a first piece holding a slot is skipped there; fragments such as "and" are
        not sentences)."""
        samples = [
            render("price", lang, x.plural, the=x.the(lang), The=x.the(lang), price=_money(x.price))
            for x in self.shop.products
        ]
        for entry in T.values():
            template = entry.get(lang)
            for text in template if isinstance(template, tuple) else [template or ""]:
                if text.rstrip()[-1:] in (".", "!", "?"):
                    samples.append(text[:1].upper() + text[1:])
        return samples

    def choose_language(self, text: str, hint: str | None, state: ConversationState) -> str:
        """The hint (from STT or the caller) if it is a shop language, else a text guess."""
        languages = self.shop.languages
        if hint in languages:
            return hint
        guess, margin, score = guess_language(text, languages)
        if state.language is None and margin > 0:
            return guess
        if margin > 0.3 and score >= 2:  # switching language mid-call needs real evidence
            return guess
        return state.language or self.shop.default_language

    # -- dispatch ----------------------------------------------------------------------------

    def _dispatch(
        self,
        text: str,
        p: Parsed,
        order_id: str | None,
        height: float | None,
        state: ConversationState,
        r: _Reply,
    ) -> None:
        pending, state.pending = state.pending, None
        topical = [
            i
            for i in (*PRODUCT_INTENTS, "shipping", "returns", "damaged", "not_as_pictured")
            if p.has(i)
        ]
        if pending and self._resume(pending, text, p, order_id, height, topical, state, r):
            return
        if p.has("human"):
            return self._callback(text, order_id or state.order_id, state, r)
        if p.has("damaged") or p.has("not_as_pictured"):
            kind = "damaged" if p.has("damaged") else "not_as_pictured"
            return self._complaint(
                kind, text, p, order_id or self._context_order(p, state), state, r
            )
        if p.has("returns") and p.scores["returns"] >= p.faq_score:
            return self._returns(text, p, order_id, state, r)
        topic_score = max([p.scores.get(i, 0.0) for i in (*PRODUCT_INTENTS, "shipping")] + [0.0])
        if p.faq is not None and p.faq_score >= topic_score:
            r.intent = f"faq.{p.faq.id}"
            r.sentences.append(p.faq.answer.get(r.lang) or p.faq.answer["en"])
            return
        if (
            order_id
            and not p.countries
            and (p.has("order_status") or p.has("shipping") or not topical)
        ):
            return self._order_status(order_id, state, r)
        if (
            p.has("order_status")
            and not p.countries
            and not any(p.has(i) for i in PRODUCT_INTENTS)
            and not p.products
        ):
            if state.order_id:
                return self._order_status(state.order_id, state, r)
            r.intent = "order_status"
            r.say("ask_order_id")
            state.pending = {"type": "order_for", "intent": "order_status"}
            return
        if p.has("shipping") and not any(
            p.scores.get(i, 0) > p.scores["shipping"] for i in PRODUCT_INTENTS
        ):
            return self._shipping(p, state, r)
        wanted = [i for i in PRODUCT_INTENTS if p.has(i)]
        if height is not None and "size" not in wanted:
            wanted.append("size")
        if wanted:
            return self._product_info(wanted, p, height, state, r)
        if p.products:
            return self._overview(p.products, r)
        if p.has("catalog"):
            r.intent = "catalog"
            items = [
                render(
                    "catalog_item",
                    r.lang,
                    capitalize=False,
                    name=x.display_name(r.lang),
                    price=_money(x.price),
                )
                for x in self.shop.products
            ]
            r.say("catalog", products=join_list(items, r.lang))
            return
        if p.has("greeting"):
            r.intent = "greeting"
            r.say("greeting")
            return
        if p.has("thanks"):
            r.intent = "thanks"
            r.say("thanks")
            return

    def _resume(
        self,
        pending: dict,
        text: str,
        p: Parsed,
        order_id: str | None,
        height: float | None,
        topical: list[str],
        state: ConversationState,
        r: _Reply,
    ) -> bool:
        """Continue what the agent asked last turn; False if the buyer moved on."""
        kind = pending["type"]
        if kind == "callback" and not topical and not p.products:
            if p.has("yes") and not p.has("no"):
                self._callback(pending["reason"], pending.get("order_id"), state, r)
                return True
            if p.has("no"):
                r.intent = "declined"
                r.say("declined")
                return True
        if kind == "order_for" and order_id:
            if pending["intent"] == "order_status":
                self._order_status(order_id, state, r)
            else:
                self._open_ticket(order_id, pending["kind"], pending["reason"], state, r)
            return True
        if kind == "product_for" and p.products:
            self._product_info(pending["intents"], p, height or pending.get("height"), state, r)
            return True
        return False

    # -- topics ------------------------------------------------------------------------------

    def _product_info(
        self,
        wanted: list[str],
        p: Parsed,
        height: float | None,
        state: ConversationState,
        r: _Reply,
    ) -> None:
        products = p.products or [
            x for x in [self.shop.product(state.product_id or "")] if x is not None
        ]
        if not products:
            products = self._only_product_with(wanted, p)
        if not products:
            r.intent = "clarify_product"
            names = [x.display_name(r.lang) for x in self.shop.products]
            r.say("which_product", products=join_list(names, r.lang))
            state.pending = {"type": "product_for", "intents": wanted, "height": height}
            return
        state.product_id = products[0].id
        r.intent = wanted[0]
        for product in products[:2]:
            for intent in wanted:
                getattr(self, f"_say_{intent}")(product, p, height, state, r)

    def _only_product_with(self, wanted: list[str], p: Parsed) -> list[Product]:
        """A product implied by the attribute ("is it waterproof?" -> the only watch)."""
        tests = {
            "size": lambda x: bool(x.sizes_by_height),
            "water": lambda x: x.water_resistance_m is not None,
            "dimensions": lambda x: x.dimensions_cm is not None,
        }
        if "material" in wanted and any_phrase(p.norm, ["nickel", "niquel", "allerg", "alerg"]):
            return [x for x in self.shop.products if x.hypoallergenic]
        for intent in wanted:
            if intent in tests:
                matches = [x for x in self.shop.products if tests[intent](x)]
                if len(matches) == 1:
                    return matches
        return []

    def _say_price(self, x: Product, p: Parsed, h: float | None, s: ConversationState, r: _Reply):
        r.say("price", x.plural, the=x.the(r.lang), The=x.the(r.lang), price=_money(x.price))

    def _say_colours(self, x: Product, p: Parsed, h: float | None, s: ConversationState, r: _Reply):
        names = x.colour_names(r.lang)
        key = "colours_one" if len(names) == 1 else "colours"
        r.say(key, x.plural, The=x.the(r.lang), colours=join_list(names, r.lang))

    def _say_material(
        self, x: Product, p: Parsed, h: float | None, s: ConversationState, r: _Reply
    ):
        allergy = any_phrase(
            p.norm,
            [
                "nickel",
                "niquel",
                "allergic",
                "allergy",
                "alergia",
                "alergico",
                "alergica",
                "hypoallergenic",
                "hipoalergenico",
                "sensitive",
            ],
        )
        if allergy and x.hypoallergenic is None:
            r.say("hypoallergenic_no", the=x.the(r.lang))
            self._offer(p.norm, s, r)
            return
        r.say("material", The=x.the(r.lang), material=x.material.get(r.lang) or x.material["en"])

    def _say_size(self, x: Product, p: Parsed, h: float | None, s: ConversationState, r: _Reply):
        if not x.sizes_by_height:
            return self._say_dimensions(x, p, h, s, r)
        lo, hi = x.sizes_by_height[0].min_cm, x.sizes_by_height[-1].max_cm
        if h is None:
            chart = [
                render(
                    "chart_item", r.lang, capitalize=False, size=z.size, lo=z.min_cm, hi=z.max_cm
                )
                for z in x.sizes_by_height
            ]
            r.say(
                "size_chart", The=x.the(r.lang), of_the=_of_the(x, r.lang), chart=", ".join(chart)
            )
            return
        size = x.size_for_height(h)
        cm = round(h)
        if size is None:
            r.say(
                "size_out_of_range",
                cm=cm,
                the=x.the(r.lang),
                of_the=_of_the(x, r.lang),
                lo=lo,
                hi=hi,
            )
            self._offer(p.norm, s, r)
            return
        rng = next(z for z in x.sizes_by_height if z.size == size)
        r.say("size_for_height", cm=cm, size=size, the=x.the(r.lang), lo=rng.min_cm, hi=rng.max_cm)

    def _say_dimensions(
        self, x: Product, p: Parsed, h: float | None, s: ConversationState, r: _Reply
    ):
        if x.dimensions_cm:
            a, b, c = (_money(v) for v in x.dimensions_cm)
            r.say("dimensions", The=x.the(r.lang), a=a, b=b, c=c)
        elif x.case_mm:
            r.say("case_size", The=x.the(r.lang), mm=_money(x.case_mm))
        else:
            self._not_sure(p.norm, s, r)

    def _say_water(self, x: Product, p: Parsed, h: float | None, s: ConversationState, r: _Reply):
        if x.water_resistance_m is not None:
            r.say("water_yes", the=x.the(r.lang), m=x.water_resistance_m)
        else:
            self._not_sure(p.norm, s, r)

    def _overview(self, products: list[Product], r: _Reply) -> None:
        r.intent = "product"
        for x in products[:2]:
            r.say(
                "overview",
                x.plural,
                The=x.the(r.lang),
                price=_money(x.price),
                colours=join_list(x.colour_names(r.lang), r.lang),
            )

    def _shipping(self, p: Parsed, state: ConversationState, r: _Reply) -> None:
        r.intent = "shipping"
        if p.countries:
            for c in p.countries[:2]:
                r.say(
                    "shipping_one",
                    country=c.name.get(r.lang) or c.name["en"],
                    lo=c.min_days,
                    hi=c.max_days,
                )
            return
        items = [
            render(
                "shipping_item",
                r.lang,
                capitalize=False,
                country=_bare(c.name.get(r.lang) or c.name["en"]),
                lo=c.min_days,
                hi=c.max_days,
            )
            for c in self.shop.countries
        ]
        if p.other_country:
            names = [_bare(c.name.get(r.lang) or c.name["en"]) for c in self.shop.countries]
            r.say("shipping_unknown", list=join_list(names, r.lang))
            self._offer(p.norm, state, r)
            r.intent = "shipping"
            return
        r.say("shipping_all", list=join_list(items, r.lang))

    def _order_status(self, order_id: str, state: ConversationState, r: _Reply) -> None:
        r.intent = "order_status"
        result = self.tools.order_status(order_id)
        r.tool_calls.append(ToolCall("order_status", {"order_id": order_id}, result))
        if not result["found"]:
            r.say("order_not_found", order=order_id)
            return
        state.order_id = order_id
        product = self.shop.product(result["product"])
        state.product_id = result["product"]
        the = product.the(r.lang) if product else result["product"]
        colour = self.shop.colour_in(product, result["colour"], r.lang) if product else ""
        order = order_id
        status = result["status"]
        if status == "in_transit":
            r.say(
                "order_in_transit",
                order=order,
                the=the,
                colour=colour,
                carrier=result.get("carrier") or "",
                tracking=result.get("tracking") or "",
                days=result.get("expected_in_days"),
            )
        elif status == "delivered":
            size = (
                render("size_suffix", r.lang, capitalize=False, size=result["size"])
                if result.get("size")
                else ""
            )
            r.say("order_delivered", order=order, the=the, colour=colour, size=size)
        else:
            r.say("order_preparing", order=order, the=the, colour=colour)

    def _returns(
        self, text: str, p: Parsed, order_id: str | None, state: ConversationState, r: _Reply
    ) -> None:
        r.intent = "returns"
        wants_exchange = any_phrase(p.norm, WANTS_EXCHANGE)
        requesting = any_phrase(p.norm, REQUEST_WORDS) or order_id is not None
        if not requesting:
            r.say("returns_policy", days=self.shop.return_window_days)
            return
        kind = "exchange" if wants_exchange else "refund"
        order_id = order_id or self._context_order(p, state)
        if order_id:
            self._open_ticket(order_id, kind, text, state, r)
            return
        r.say("returns_policy", days=self.shop.return_window_days)
        r.say("ask_order_for_ticket")
        state.pending = {"type": "order_for", "intent": "ticket", "kind": kind, "reason": text}

    def _complaint(
        self,
        what: str,
        text: str,
        p: Parsed,
        order_id: str | None,
        state: ConversationState,
        r: _Reply,
    ) -> None:
        r.intent = f"returns.{what}"
        r.say(what)
        if what == "damaged":
            kind = "exchange" if any_phrase(p.norm, WANTS_EXCHANGE) else "refund"
        else:
            kind = "refund" if any_phrase(p.norm, WANTS_REFUND) else "exchange"
        if order_id:
            self._open_ticket(order_id, kind, text, state, r)
            r.intent = f"returns.{what}"
            return
        r.say("ask_order_for_ticket")
        state.pending = {"type": "order_for", "intent": "ticket", "kind": kind, "reason": text}

    def _context_order(self, p: Parsed, state: ConversationState) -> str | None:
        """The order talked about before, unless the buyer now names another product."""
        order = self.shop.orders.get(state.order_id or "")
        if order is None or (p.products and order.product not in {x.id for x in p.products}):
            return None
        return order.id

    def _open_ticket(
        self, order_id: str, kind: str, reason: str, state: ConversationState, r: _Reply
    ) -> None:
        r.intent = f"ticket.{kind}"
        if order_id not in self.shop.orders:
            r.say("order_not_found", order=order_id)
            return
        state.order_id = order_id
        args = {"order_id": order_id, "kind": kind, "reason": reason}
        result = self.tools.open_ticket(
            order_id,
            kind,
            reason,
            reason_en=self._to_english(reason, r.lang),
            language=r.lang,
            customer=state.customer,
        )
        r.tool_calls.append(ToolCall("open_ticket", args, result))
        key = "ticket_opened" if result["created"] else "ticket_exists"
        r.say(
            key,
            kind=render(f"kind_{kind}", r.lang).lower(),
            a_request=render(f"request_{kind}", r.lang).lower(),
            order=order_id,
            ref=result["ref"],
        )

    def _callback(
        self, reason: str, order_id: str | None, state: ConversationState, r: _Reply
    ) -> None:
        r.intent = "ticket.callback"
        if order_id not in self.shop.orders:
            order_id = None
        args = {"order_id": order_id, "kind": "callback", "reason": reason}
        result = self.tools.open_ticket(
            order_id,
            "callback",
            reason,
            reason_en=self._to_english(reason, r.lang),
            language=r.lang,
            customer=state.customer,
        )
        r.tool_calls.append(ToolCall("open_ticket", args, result))
        r.say("callback_opened" if result["created"] else "callback_exists", ref=result["ref"])

    def _not_sure(self, text: str, state: ConversationState, r: _Reply) -> None:
        if not r.sentences:
            r.intent = "not_sure"
        r.say("not_sure")
        self._offer(text, state, r)

    def _offer(self, text: str, state: ConversationState, r: _Reply) -> None:
        r.confident = False
        r.offered_human = True
        r.say("offer_callback")
        state.pending = {"type": "callback", "reason": text, "order_id": state.order_id}

    def _to_english(self, text: str, lang: str) -> str | None:
        if lang == "en":
            return text
        if self.translator is None or not self.translator.supports(lang, "en"):
            return None
        try:
            return self.translator.translate(text, lang, "en")
        except Exception:  # a ticket must open even if translation fails
            return None


def _money(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def _bare(country_name: str) -> str:
    """'o Brasil' -> 'Brasil' for lists."""
    return re.sub(r"^(?:the|o|a|os|as) ", "", country_name)


def _of_the(x: Product, lang: str) -> str:
    text = render("of_the", lang, the=x.the(lang))
    text = text[:1].lower() + text[1:]
    return text.replace("de el ", "del ")
