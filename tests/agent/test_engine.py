"""The grounded answer engine: each intent in each language, context, tools, 'not sure'."""

import pytest

from agent.answer import ConversationState
from agent.answer.evaluate import holds_facts
from agent.answer.text import guess_language


def ask(engine, text, state=None, lang=None):
    return engine.answer(text, state or ConversationState(), lang)


@pytest.mark.parametrize(
    "text, lang",
    [
        ("How much is the leather bag?", "en"),
        ("Quanto custa o vestido de linho?", "pt"),
        ("¿Cuánto cuesta el reloj?", "es"),
        ("Meus brincos chegaram quebrados", "pt"),
        ("Mi pedido llegó roto", "es"),
        ("Where is my order?", "en"),
    ],
)
def test_language_guess(text, lang):
    assert guess_language(text)[0] == lang


@pytest.mark.parametrize(
    "question, intent, facts",
    [
        ("What does the watch cost?", "price", ["420 dollars"]),
        ("Quanto custam os brincos?", "price", ["custam 49 dolares"]),
        ("¿Cuánto cuesta el vestido?", "price", ["89 dolares"]),
        ("Which colours does the bag come in?", "colours", ["tan", "black"]),
        ("Quais são as cores do relógio?", "colours", ["aco", "dourado"]),
        ("¿De qué colores es el vestido?", "colours", ["arena", "oliva", "azul marino"]),
        ("What is the dress made of?", "material", ["100% linen"]),
        ("Os brincos têm níquel?", "material", ["sem niquel"]),
        ("¿Es de cuero el bolso?", "material", ["cuero de plena flor"]),
        ("I'm 172 cm, what size dress?", "size", ["size l"]),
        ("Tenho 1,58 m, qual tamanho do vestido?", "size", ["tamanho s"]),
        ("Mido 1,83, ¿qué talla de vestido?", "size", ["talla xl"]),
        ("How big is the tote bag?", "dimensions", ["38 by 30 by 12"]),
        ("Quais as medidas da bolsa?", "dimensions", ["38 por 30 por 12"]),
        ("¿Qué medidas tiene el bolso?", "dimensions", ["38 por 30 por 12"]),
        ("Is the watch waterproof?", "water", ["50 metres"]),
        ("Posso nadar com o relógio?", "water", ["50 metros"]),
        ("¿Puedo bucear con el reloj?", "water", ["50 metros"]),
        ("How long is shipping to Brazil?", "shipping", ["7 to 12 business days"]),
        ("Quanto tempo leva o envio para a Alemanha?", "shipping", ["5 a 9 dias uteis"]),
        ("¿Cuánto tarda el envío a España?", "shipping", ["6 a 10 dias habiles"]),
        ("Can I return an item?", "returns", ["30 days"]),
        ("Posso devolver um produto?", "returns", ["30 dias"]),
        ("¿Cuál es la política de devoluciones?", "returns", ["30 dias"]),
        ("How do I pay?", "faq.payment", ["paypal"]),
        ("Quais formas de pagamento vocês aceitam?", "faq.payment", ["pix"]),
        ("Do I pay import taxes?", "faq.customs", ["buyer"]),
        ("¿Pagaré impuestos de aduana?", "faq.customs", ["comprador"]),
        ("Do you do gift wrapping?", "faq.gift_wrap", ["5 dollars"]),
        ("¿Hacen papel de regalo?", "faq.gift_wrap", ["5 dolares"]),
    ],
)
def test_intents(engine, question, intent, facts):
    answer = ask(engine, question)
    assert answer.intent == intent, answer.text
    assert holds_facts(answer.text, facts) == [], answer.text
    assert answer.confident


@pytest.mark.parametrize(
    "question, lang, facts",
    [
        ("Where is order 10023?", "en", ["in transit", "DHL Express", "JD014600006281", "3 days"]),
        (
            "Status do pedido um zero zero dois quatro",
            "pt",
            ["entregue", "azul-marinho", "tamanho m"],
        ),
        ("¿Dónde está mi pedido diez mil veinticinco?", "es", ["se esta preparando", "acero"]),
    ],
)
def test_order_status_tool(engine, question, lang, facts):
    answer = ask(engine, question)
    assert answer.intent == "order_status" and answer.language == lang
    assert [c.name for c in answer.tool_calls] == ["order_status"]
    assert holds_facts(answer.text, facts) == [], answer.text


def test_unknown_order_is_not_invented(engine):
    answer = ask(engine, "where is my order 99999")
    assert answer.tool_calls[0].result == {"found": False, "order_id": "99999"}
    assert "couldn't find order 99999" in answer.text


def test_order_number_asked_then_given(engine):
    state = ConversationState()
    assert "order number" in ask(engine, "Where is my order?", state).text
    answer = ask(engine, "one zero zero two five", state)
    assert answer.intent == "order_status" and "being prepared" in answer.text


def test_not_as_pictured_opens_one_exchange_ticket(engine, store):
    q = "Order 10024: the dress came in another colour, not as pictured"
    first = ask(engine, q)
    assert first.intent == "returns.not_as_pictured"
    assert "free" in first.text and "refund if you prefer" in first.text
    call = first.tool_calls[0]
    assert call.name == "open_ticket" and call.args["kind"] == "exchange"
    again = ask(engine, q)
    assert "already an open exchange request" in again.text
    assert again.tool_calls[0].result["ref"] == call.result["ref"]
    assert len(store.list()) == 1


def test_damaged_gives_refund_or_replacement(engine):
    refund = ask(engine, "O relógio do pedido 10025 chegou quebrado")
    assert refund.language == "pt" and refund.tool_calls[0].args["kind"] == "refund"
    assert "reembolso total ou um item novo" in refund.text
    replacement = ask(engine, "The watch in order 10025 is broken, I want a replacement")
    assert replacement.tool_calls[0].args["kind"] == "exchange"


def test_complaint_without_order_asks_for_it(engine, store):
    state = ConversationState()
    first = ask(engine, "Mi bolso llegó dañado", state)
    assert first.language == "es" and "numero de tu pedido" in holds_facts_text(first.text)
    second = ask(engine, "uno cero cero dos tres", state)
    assert second.intent == "ticket.refund" and second.language == "es"
    assert store.list()[0].order_id == "10023"


def holds_facts_text(text):
    from agent.answer.text import strip_accents

    return strip_accents(text.lower())


def test_context_keeps_the_product(engine):
    state = ConversationState()
    ask(engine, "Tell me about the silver hoop earrings", state)
    assert "49 dollars" in ask(engine, "how much are they?", state).text
    assert "nickel-free" in ask(engine, "are they hypoallergenic?", state).text


def test_attribute_implies_the_only_product_that_has_it(engine):
    assert "50 metres" in ask(engine, "is it water resistant?").text
    assert "size M" in ask(engine, "I am 170 cm, which size?").text


@pytest.mark.parametrize(
    "question, lang, phrase",
    [
        ("Do you sell sunglasses?", "en", "not sure"),
        ("Vocês vendem tênis?", "pt", "nao tenho certeza"),
        ("¿Venden gafas de sol?", "es", "no estoy seguro"),
    ],
)
def test_not_sure_offers_a_callback_in_the_buyer_language(engine, store, question, lang, phrase):
    state = ConversationState(customer="buyer-1")
    answer = ask(engine, question, state)
    assert answer.language == lang and not answer.confident and answer.offered_human
    assert phrase in holds_facts_text(answer.text)
    yes = {"en": "yes please", "pt": "sim, por favor", "es": "sí, por favor"}[lang]
    accepted = ask(engine, yes, state)
    assert accepted.intent == "ticket.callback" and accepted.language == lang
    tickets = store.list()
    assert len(tickets) == 1 and tickets[0].kind == "callback" and tickets[0].reason == question


def test_unknown_attribute_is_not_invented(engine):
    answer = ask(engine, "Is the linen dress waterproof?")
    assert not answer.confident and "not sure" in answer.text


def test_size_outside_the_chart_is_not_guessed(engine):
    answer = ask(engine, "I am 195 cm tall, which dress size?")
    assert "outside the size chart" in answer.text and not answer.confident


def test_declining_the_callback(engine, store):
    state = ConversationState()
    ask(engine, "Do you have a store in Paris?", state)
    assert ask(engine, "no thanks", state).intent == "declined"
    assert store.list() == []


def test_explicit_human_request(engine, store):
    answer = ask(engine, "I want to speak to a human about order 10023")
    assert answer.intent == "ticket.callback"
    assert store.list()[0].order_id == "10023"


@pytest.mark.parametrize("lang", ["pt", "es"])
def test_speech_samples_open_like_the_answers_do(engine, lang):
    """What the voice prepares ahead (agent/audio/kokoro_tts.py `prepare`) is how real answers
    start: an answer about a product opens with the same first piece as the samples."""
    from agent.audio.kokoro_tts import first_piece

    samples = engine.speech_samples(lang)
    openings = {first_piece(s) for s in samples}
    questions = {
        "pt": ["Quanto custa o relógio automático?", "Qual é a política de devolução?"],
        "es": ["¿Cuánto cuesta el reloj automático?", "¿Cuál es la política de devoluciones?"],
    }[lang]
    for question in questions:
        answer = ask(engine, question, lang=lang)
        assert first_piece(answer.text) in openings, (answer.text, sorted(openings))
    assert all(s.rstrip()[-1] in ".!?" for s in samples)  # sentences, not fragments
