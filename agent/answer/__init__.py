"""The grounded answer engine: shop data, intents, numbers, templates and tools."""

from .base import Answer, AnswerEngine, ConversationState, ToolCall
from .engine import GroundedEngine
from .shop import Shop, load_shop
from .tools import ShopTools, Ticket, TicketStore

__all__ = [
    "Answer",
    "AnswerEngine",
    "ConversationState",
    "GroundedEngine",
    "Shop",
    "ShopTools",
    "Ticket",
    "TicketStore",
    "ToolCall",
    "load_shop",
]
