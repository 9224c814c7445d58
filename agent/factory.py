"""Builds the agent's parts from an AgentConfig (one place that knows the defaults)."""

from __future__ import annotations

from .answer import GroundedEngine, ShopTools, TicketStore, load_shop
from .config import AgentConfig
from .translate import make_translator


def build_engine(config: AgentConfig, translator=None) -> tuple[GroundedEngine, TicketStore]:
    """The grounded engine over the configured shop, with its ticket store (caller closes it)."""
    shop = load_shop(config.shop.dir or None)
    store = TicketStore(config.tickets_db)
    if translator is None:
        t = config.translate
        translator = make_translator(t.backend, t.model_dir, t.source, t.target)
    return GroundedEngine(shop, ShopTools(shop, store), translator), store
