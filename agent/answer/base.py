"""What every answer engine takes and gives: the conversation state in, an Answer out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass
class ToolCall:
    name: str
    args: dict[str, Any]
    result: dict[str, Any]


@dataclass
class ConversationState:
    """What the engine remembers between turns of one conversation."""

    customer: str = "cli"
    language: str | None = None
    product_id: str | None = None  # the product last talked about
    order_id: str | None = None  # the order last talked about
    pending: dict[str, Any] | None = None  # a question the agent asked and awaits an answer to
    turns: int = 0


@dataclass
class Answer:
    text: str
    language: str
    intent: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    product_id: str | None = None
    confident: bool = True  # False when the engine said it is not sure
    offered_human: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AnswerEngine(Protocol):
    """Turns one buyer utterance (typed or transcribed) into the agent's reply."""

    def answer(
        self, text: str, state: ConversationState, language: str | None = None
    ) -> Answer: ...
