"""Builds the agent's parts from an AgentConfig (one place that knows the defaults)."""

from __future__ import annotations

from .answer import AnswerEngine, GroundedEngine, ShopTools, TicketStore, load_shop
from .config import AgentConfig
from .translate import translator_from_settings


def build_engine(config: AgentConfig, translator=None) -> tuple[AnswerEngine, TicketStore]:
    """The answer engine over the configured shop, with its ticket store (caller closes it).

    The grounded engine by default; the LLM backend when [llm] url is set (it falls back to the
    grounded engine on errors and calls the same tools)."""
    shop = load_shop(config.shop.dir or None)
    store = TicketStore(config.tickets_db)
    if translator is None:
        translator = translator_from_settings(config.translate)
    tools = ShopTools(shop, store)
    grounded = GroundedEngine(shop, tools, translator)
    if not config.llm.url:
        return grounded, store
    from .answer.llm import LlmEngine

    llm = config.llm
    engine = LlmEngine(
        shop,
        tools,
        grounded,
        url=llm.url,
        model=llm.model,
        api_key=config.llm_api_key,
        timeout_s=llm.timeout_s,
        max_rounds=llm.max_rounds,
    )
    return engine, store
