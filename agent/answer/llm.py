"""An answer backend over any OpenAI-compatible chat-completions endpoint (agent.toml [llm]).

The model gets a system prompt holding the shop's catalogue, shipping table and FAQ (the same data
the grounded engine answers from) and the buyer's language, and may call the same tools as the
grounded engine -- order_status(order_id) and open_ticket(order_id, kind, reason) -- through OpenAI
function calling. Tools run through agent.answer.tools.ShopTools, so a ticket asked for twice is
still one open ticket. Tool calls loop until the model answers in text, for at most `max_rounds`
requests. Any error or timeout (endpoint down, bad reply, too many rounds) falls back to the
grounded engine's answer, with a warning in the log.

`answer()` keeps the synchronous AnswerEngine interface (callers run it in a worker thread);
`answer_async()` is the same on an event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
import weakref
from dataclasses import asdict
from typing import Any

import aiohttp

from .base import Answer, ConversationState, ToolCall
from .engine import GroundedEngine
from .shop import Shop
from .tools import TICKET_KINDS, ShopTools

log = logging.getLogger(__name__)

LANGUAGE_NAMES = {"en": "English", "pt": "Portuguese", "es": "Spanish"}
HISTORY_MESSAGES = 12  # earlier user/assistant messages kept per conversation

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "order_status",
            "description": "Look up one of the shop's orders by its number (e.g. 10023).",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string", "description": "order number"}},
                "required": ["order_id"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "open_ticket",
            "description": (
                "Open a support ticket: a refund, an exchange, or a callback from a person. "
                "Asking again for the same order and kind returns the same open ticket."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "order_id": {
                        "type": ["string", "null"],
                        "description": "order number, or null when there is none",
                    },
                    "kind": {"type": "string", "enum": list(TICKET_KINDS)},
                    "reason": {"type": "string", "description": "the buyer's reason, briefly"},
                },
                "required": ["order_id", "kind", "reason"],
            },
        },
    },
]


class LlmError(RuntimeError):
    """The endpoint failed or replied with something unusable."""


def system_prompt(shop: Shop, language: str) -> str:
    """The shop's facts (not its orders: those come from order_status) and the reply language."""
    facts = {
        "shop": shop.name,
        "currency": shop.currency,
        "products": [asdict(p) for p in shop.products],
        "shipping_business_days": [
            {"country": c.name.get("en", c.code), "min": c.min_days, "max": c.max_days}
            for c in shop.countries
        ],
        "return_window_days": shop.return_window_days,
        "faq": [{"id": f.id, "answer": f.answer.get("en") or f.answer} for f in shop.faq],
    }
    name = LANGUAGE_NAMES.get(language, language)
    return (
        f"You are the customer support voice assistant of {shop.name}. Answer in {name} "
        f"(language code {language}), in one to three short spoken sentences, no markdown. "
        "Use only the facts below and the results of your tools; never invent a fact. For an "
        "order, call order_status. For a refund, exchange or a person to call back, call "
        "open_ticket and give the ticket reference. If you are not sure, say so and offer a "
        "callback from a person.\n\nShop data (JSON):\n"
        + json.dumps(facts, ensure_ascii=False, separators=(",", ":"))
    )


class LlmEngine:
    """Answers through an OpenAI-compatible chat endpoint; falls back to the grounded engine."""

    def __init__(
        self,
        shop: Shop,
        tools: ShopTools,
        fallback: GroundedEngine,
        *,
        url: str,
        model: str = "",
        api_key: str = "",
        timeout_s: float = 20.0,
        max_rounds: int = 4,
        temperature: float = 0.2,
    ) -> None:
        self.shop = shop
        self.tools = tools
        self.fallback = fallback
        self.url = _completions_url(url)
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_rounds = max(1, max_rounds)
        self.temperature = temperature
        self._history: dict[int, list[dict[str, Any]]] = {}

    # -- AnswerEngine ----------------------------------------------------------------------------

    def answer(self, text: str, state: ConversationState, language: str | None = None) -> Answer:
        """Blocking; never call it on a running event loop's thread (use answer_async there)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.answer_async(text, state, language))
        # called from inside a loop's thread anyway: run on a private loop in another thread
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.answer_async(text, state, language)).result()

    async def answer_async(
        self, text: str, state: ConversationState, language: str | None = None
    ) -> Answer:
        t0 = time.perf_counter()
        lang = self.fallback.choose_language(text, language, state)
        tool_calls: list[ToolCall] = []
        try:
            reply = await self._converse(text, state, lang, tool_calls)
        except Exception as e:  # noqa: BLE001 -- any failure of the endpoint means: fall back
            log.warning(
                "LLM backend failed (%s: %s); using the grounded engine", type(e).__name__, e
            )
            answer = self.fallback.answer(text, state, language)
            answer.tool_calls = tool_calls + answer.tool_calls
            answer.timings_ms["llm_failed"] = (time.perf_counter() - t0) * 1e3
            return answer
        state.language = lang
        state.turns += 1
        orders = [c.args.get("order_id") for c in tool_calls if c.args.get("order_id")]
        if orders:
            state.order_id = str(orders[-1])
        return Answer(
            text=reply,
            language=lang,
            intent="llm.tools" if tool_calls else "llm",
            tool_calls=tool_calls,
            product_id=state.product_id,
            timings_ms={"llm": (time.perf_counter() - t0) * 1e3},
        )

    # -- the conversation with the endpoint ------------------------------------------------------

    async def _converse(
        self, text: str, state: ConversationState, lang: str, tool_calls: list[ToolCall]
    ) -> str:
        history = self._history_of(state)
        turn: list[dict[str, Any]] = [{"role": "user", "content": text}]
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as http:
            for _ in range(self.max_rounds):
                messages = [
                    {"role": "system", "content": system_prompt(self.shop, lang)},
                    *history,
                    *turn,
                ]
                message = await self._complete(http, messages)
                calls = message.get("tool_calls") or []
                if not calls:
                    content = (message.get("content") or "").strip()
                    if not content:
                        raise LlmError("empty answer")
                    turn.append({"role": "assistant", "content": content})
                    history.extend(m for m in turn if m["role"] in ("user", "assistant"))
                    history[:] = [m for m in history if m.get("content")][-HISTORY_MESSAGES:]
                    return content
                turn.append(
                    {"role": "assistant", "content": message.get("content"), "tool_calls": calls}
                )
                for call in calls:
                    result = self._run_tool(call, state, lang, tool_calls)
                    turn.append(
                        {
                            "role": "tool",
                            "tool_call_id": call.get("id", ""),
                            "content": json.dumps(result, ensure_ascii=False),
                        }
                    )
        raise LlmError(f"no final answer after {self.max_rounds} rounds")

    async def _complete(
        self, http: aiohttp.ClientSession, messages: list[dict[str, Any]]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": messages,
            "tools": TOOLS,
            "tool_choice": "auto",
            "temperature": self.temperature,
        }
        if self.model:
            body["model"] = self.model
        async with http.post(self.url, json=body) as resp:
            if resp.status != 200:
                raise LlmError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            data = await resp.json(content_type=None)
        try:
            return data["choices"][0]["message"]
        except (KeyError, IndexError, TypeError) as e:
            raise LlmError(f"unexpected reply: {str(data)[:200]}") from e

    def _run_tool(
        self, call: dict[str, Any], state: ConversationState, lang: str, log_to: list[ToolCall]
    ) -> dict[str, Any]:
        fn = call.get("function") or {}
        name = fn.get("name", "")
        args: dict[str, Any] = {}
        try:
            parsed = json.loads(fn.get("arguments") or "{}")
            if not isinstance(parsed, dict):
                raise ValueError("arguments must be a JSON object")
            args = parsed
            if name == "order_status":
                result = self.tools.order_status(str(args["order_id"]))
            elif name == "open_ticket":
                order_id = args.get("order_id")
                result = self.tools.open_ticket(
                    str(order_id) if order_id else None,
                    str(args["kind"]),
                    str(args.get("reason") or ""),
                    language=lang,
                    customer=state.customer,
                )
            else:
                result = {"error": f"unknown tool {name!r}"}
        except (KeyError, ValueError, TypeError) as e:
            result = {"error": f"bad arguments: {e}"}
        log_to.append(ToolCall(name, args, result))
        return result

    def _history_of(self, state: ConversationState) -> list[dict[str, Any]]:
        key = id(state)
        if key not in self._history:
            self._history[key] = []
            weakref.finalize(state, self._history.pop, key, None)
        return self._history[key]


def _completions_url(url: str) -> str:
    """Accepts the base URL (http://host:port/v1) or the full chat-completions URL."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"
