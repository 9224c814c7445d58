# ruff: noqa: E501 -- one sentence per line reads better than wrapped fragments
"""Answer templates per language. A tuple holds (singular, plural) forms where the verb agrees.

Adding a language means adding one entry per key here, names in configs/shop/*.json, and the
language's number words in numbers.py; `missing_templates()` lists what a new language still lacks.
"""

from __future__ import annotations

T: dict[str, dict[str, str | tuple[str, str]]] = {
    "price": {
        "en": ("{The} costs {price} dollars.", "{The} cost {price} dollars."),
        "pt": ("{The} custa {price} dólares.", "{The} custam {price} dólares."),
        "es": ("{The} cuesta {price} dólares.", "{The} cuestan {price} dólares."),
    },
    "colours": {
        "en": ("{The} comes in {colours}.", "{The} come in {colours}."),
        "pt": ("{The} está disponível em {colours}.", "{The} estão disponíveis em {colours}."),
        "es": ("{The} está disponible en {colours}.", "{The} están disponibles en {colours}."),
    },
    "colours_one": {
        "en": ("{The} comes only in {colours}.", "{The} come only in {colours}."),
        "pt": ("{The} só existe em {colours}.", "{The} só existem em {colours}."),
        "es": ("{The} solo viene en {colours}.", "{The} solo vienen en {colours}."),
    },
    "material": {"en": "{The} {material}.", "pt": "{The} {material}.", "es": "{The} {material}."},
    "hypoallergenic_no": {
        "en": "I have no allergy information for {the}.",
        "pt": "Não tenho informação sobre alergias para {the}.",
        "es": "No tengo información sobre alergias para {the}.",
    },
    "dimensions": {
        "en": "{The} measures {a} by {b} by {c} centimetres.",
        "pt": "{The} mede {a} por {b} por {c} centímetros.",
        "es": "{The} mide {a} por {b} por {c} centímetros.",
    },
    "case_size": {
        "en": "{The} has a {mm} millimetre case.",
        "pt": "{The} tem caixa de {mm} milímetros.",
        "es": "{The} tiene una caja de {mm} milímetros.",
    },
    "water_yes": {
        "en": "Yes, {the} is water resistant to {m} metres.",
        "pt": "Sim, {the} é resistente à água até {m} metros.",
        "es": "Sí, {the} es resistente al agua hasta {m} metros.",
    },
    "size_for_height": {
        "en": "At {cm} centimetres tall, I recommend size {size} of {the}; size {size} is for {lo} to {hi} centimetres.",
        "pt": "Com {cm} centímetros de altura, recomendo o tamanho {size} para {the}; o tamanho {size} é para {lo} a {hi} centímetros.",
        "es": "Con {cm} centímetros de altura, te recomiendo la talla {size} para {the}; la talla {size} es para {lo} a {hi} centímetros.",
    },
    "size_chart": {
        "en": "{The} is sized by height: {chart}. Tell me your height and I will pick the size.",
        "pt": "Os tamanhos {of_the} vão pela altura: {chart}. Diga a sua altura e eu escolho o tamanho.",
        "es": "Las tallas {of_the} van por altura: {chart}. Dime tu altura y te digo la talla.",
    },
    "chart_item": {
        "en": "{size} {lo} to {hi} cm",
        "pt": "{size} de {lo} a {hi} cm",
        "es": "{size} de {lo} a {hi} cm",
    },
    "size_out_of_range": {
        "en": "At {cm} centimetres you are outside the size chart of {the}, which goes from {lo} to {hi} centimetres, so I am not sure which size fits.",
        "pt": "Com {cm} centímetros você fica fora da tabela de tamanhos {of_the}, que vai de {lo} a {hi} centímetros, então não tenho certeza de qual tamanho serve.",
        "es": "Con {cm} centímetros quedas fuera de la tabla de tallas {of_the}, que va de {lo} a {hi} centímetros, así que no estoy seguro de qué talla te queda.",
    },
    "overview": {
        "en": (
            "{The} costs {price} dollars and comes in {colours}.",
            "{The} cost {price} dollars and come in {colours}.",
        ),
        "pt": (
            "{The} custa {price} dólares e está disponível em {colours}.",
            "{The} custam {price} dólares e estão disponíveis em {colours}.",
        ),
        "es": (
            "{The} cuesta {price} dólares y está disponible en {colours}.",
            "{The} cuestan {price} dólares y están disponibles en {colours}.",
        ),
    },
    "which_product": {
        "en": "Which product do you mean? We have {products}.",
        "pt": "De qual produto você está falando? Temos {products}.",
        "es": "¿De qué producto hablas? Tenemos {products}.",
    },
    "catalog": {
        "en": "We sell {products}.",
        "pt": "Vendemos {products}.",
        "es": "Vendemos {products}.",
    },
    "catalog_item": {
        "en": "{name} for {price} dollars",
        "pt": "{name} por {price} dólares",
        "es": "{name} por {price} dólares",
    },
    "shipping_one": {
        "en": "Shipping to {country} takes {lo} to {hi} business days.",
        "pt": "O envio para {country} leva de {lo} a {hi} dias úteis.",
        "es": "El envío a {country} tarda de {lo} a {hi} días hábiles.",
    },
    "shipping_all": {
        "en": "Shipping times in business days: {list}.",
        "pt": "Prazos de envio em dias úteis: {list}.",
        "es": "Plazos de envío en días hábiles: {list}.",
    },
    "shipping_item": {
        "en": "{country} {lo} to {hi}",
        "pt": "{country} de {lo} a {hi}",
        "es": "{country} de {lo} a {hi}",
    },
    "shipping_unknown": {
        "en": "I don't have shipping times for that country. We ship to {list}.",
        "pt": "Não tenho prazos de envio para esse país. Enviamos para {list}.",
        "es": "No tengo plazos de envío para ese país. Enviamos a {list}.",
    },
    "returns_policy": {
        "en": "You can return any item within {days} days of delivery. If an item is not as pictured, for example another colour, we exchange it for free, or refund you if you prefer. If it arrives damaged or broken, you get a full refund or a replacement.",
        "pt": "Você pode devolver qualquer item em até {days} dias após a entrega. Se o item não for como na foto, por exemplo de outra cor, fazemos a troca grátis, ou o reembolso se preferir. Se chegar danificado ou quebrado, você recebe o reembolso total ou um item novo.",
        "es": "Puedes devolver cualquier artículo dentro de los {days} días posteriores a la entrega. Si el artículo no es como en la foto, por ejemplo de otro color, lo cambiamos gratis, o te devolvemos el dinero si lo prefieres. Si llega dañado o roto, recibes un reembolso completo o un reemplazo.",
    },
    "not_as_pictured": {
        "en": "I'm sorry it is not as pictured. We exchange it for free, or give you a refund if you prefer.",
        "pt": "Sinto muito que não seja como na foto. Fazemos a troca grátis, ou o reembolso se você preferir.",
        "es": "Siento que no sea como en la foto. Te lo cambiamos gratis, o te devolvemos el dinero si lo prefieres.",
    },
    "damaged": {
        "en": "I'm sorry it arrived damaged. You can have a full refund or a replacement.",
        "pt": "Sinto muito que tenha chegado danificado. Você pode receber o reembolso total ou um item novo.",
        "es": "Siento que haya llegado dañado. Puedes recibir un reembolso completo o un reemplazo.",
    },
    "ask_order_for_ticket": {
        "en": "Tell me your order number and I will open the request.",
        "pt": "Diga o número do seu pedido e eu abro a solicitação.",
        "es": "Dime el número de tu pedido y abro la solicitud.",
    },
    "ticket_opened": {
        "en": "I have opened {a_request} for order {order}, ticket {ref}. Our team will follow up.",
        "pt": "Abri {a_request} para o pedido {order}, chamado {ref}. Nossa equipe vai dar continuidade.",
        "es": "Abrí {a_request} para el pedido {order}, ticket {ref}. Nuestro equipo le dará seguimiento.",
    },
    "ticket_exists": {
        "en": "There is already an open {kind} request for order {order}, ticket {ref}. Our team will follow up.",
        "pt": "Já existe uma solicitação de {kind} aberta para o pedido {order}, chamado {ref}. Nossa equipe vai dar continuidade.",
        "es": "Ya hay una solicitud de {kind} abierta para el pedido {order}, ticket {ref}. Nuestro equipo le dará seguimiento.",
    },
    "request_refund": {
        "en": "a refund request",
        "pt": "uma solicitação de reembolso",
        "es": "una solicitud de reembolso",
    },
    "request_exchange": {
        "en": "an exchange request",
        "pt": "uma solicitação de troca",
        "es": "una solicitud de cambio",
    },
    "kind_refund": {"en": "refund", "pt": "reembolso", "es": "reembolso"},
    "kind_exchange": {"en": "exchange", "pt": "troca", "es": "cambio"},
    "kind_callback": {"en": "callback", "pt": "retorno de ligação", "es": "llamada"},
    "order_in_transit": {
        "en": "Order {order}, {the} in {colour}, has shipped and is in transit with {carrier}. The tracking number is {tracking}, and it should arrive in about {days} days.",
        "pt": "O pedido {order}, {the} na cor {colour}, foi enviado e está em trânsito com a {carrier}. O código de rastreio é {tracking}, e a entrega está prevista em cerca de {days} dias.",
        "es": "El pedido {order}, {the} en color {colour}, fue enviado y está en tránsito con {carrier}. El número de seguimiento es {tracking}, y debería llegar en unos {days} días.",
    },
    "order_delivered": {
        "en": "Order {order}, {the} in {colour}{size}, has been delivered.",
        "pt": "O pedido {order}, {the} na cor {colour}{size}, já foi entregue.",
        "es": "El pedido {order}, {the} en color {colour}{size}, ya fue entregado.",
    },
    "order_preparing": {
        "en": "Order {order}, {the} in {colour}, is being prepared and has not shipped yet.",
        "pt": "O pedido {order}, {the} na cor {colour}, está sendo preparado e ainda não foi enviado.",
        "es": "El pedido {order}, {the} en color {colour}, se está preparando y todavía no se ha enviado.",
    },
    "size_suffix": {"en": ", size {size}", "pt": ", tamanho {size}", "es": ", talla {size}"},
    "order_not_found": {
        "en": "I couldn't find order {order}. Please check the number; our order numbers have five digits.",
        "pt": "Não encontrei o pedido {order}. Confira o número, por favor; nossos pedidos têm cinco dígitos.",
        "es": "No encontré el pedido {order}. Revisa el número, por favor; nuestros pedidos tienen cinco dígitos.",
    },
    "ask_order_id": {
        "en": "What is your order number?",
        "pt": "Qual é o número do seu pedido?",
        "es": "¿Cuál es el número de tu pedido?",
    },
    "not_sure": {
        "en": "I'm not sure about that, and I don't want to guess.",
        "pt": "Não tenho certeza sobre isso e não quero chutar.",
        "es": "No estoy seguro de eso y no quiero adivinar.",
    },
    "offer_callback": {
        "en": "Would you like a person from our team to call you back?",
        "pt": "Quer que uma pessoa da nossa equipe ligue para você?",
        "es": "¿Quieres que una persona de nuestro equipo te llame?",
    },
    "callback_opened": {
        "en": "Done: a person from our team will call you back. Your ticket is {ref}.",
        "pt": "Pronto: uma pessoa da nossa equipe vai ligar para você. Seu chamado é {ref}.",
        "es": "Listo: una persona de nuestro equipo te llamará. Tu ticket es {ref}.",
    },
    "callback_exists": {
        "en": "You already have a callback request open, ticket {ref}. A person from our team will call you.",
        "pt": "Você já tem um pedido de retorno aberto, chamado {ref}. Uma pessoa da nossa equipe vai ligar para você.",
        "es": "Ya tienes una solicitud de llamada abierta, ticket {ref}. Una persona de nuestro equipo te llamará.",
    },
    "declined": {
        "en": "All right. What else can I help you with?",
        "pt": "Tudo bem. Posso ajudar com mais alguma coisa?",
        "es": "De acuerdo. ¿En qué más puedo ayudarte?",
    },
    "greeting": {
        "en": "Hello! I can help with our products, sizes, shipping, returns and your orders. What would you like to know?",
        "pt": "Olá! Posso ajudar com nossos produtos, tamanhos, envio, devoluções e seus pedidos. O que você gostaria de saber?",
        "es": "¡Hola! Puedo ayudarte con nuestros productos, tallas, envíos, devoluciones y tus pedidos. ¿Qué te gustaría saber?",
    },
    "thanks": {
        "en": "You're welcome! Anything else?",
        "pt": "De nada! Mais alguma coisa?",
        "es": "¡De nada! ¿Algo más?",
    },
    "and": {"en": "and", "pt": "e", "es": "y"},
    "of_the": {"en": "of {the}", "pt": "d{the}", "es": "de {the}"},
}


def render(
    key: str, lang: str, plural: bool = False, capitalize: bool = True, **fields: object
) -> str:
    """The template `key` in `lang` (English if the language lacks it), filled with `fields`."""
    entry = T[key]
    template = entry.get(lang) or entry["en"]
    if isinstance(template, tuple):
        template = template[1 if plural else 0]
    text = template.format(**fields)
    return text[:1].upper() + text[1:] if capitalize else text


def join_list(items: list[str], lang: str) -> str:
    """'a, b and c' in the language."""
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {T['and'][lang]} {items[-1]}"


def missing_templates(lang: str) -> list[str]:
    return [key for key, entry in T.items() if lang not in entry]
