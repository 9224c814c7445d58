"""The LLM answer backend against a small fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from aiohttp import web

from agent.answer import ConversationState, GroundedEngine, ShopTools
from agent.answer.llm import LlmEngine
from agent.config import AgentConfig
from agent.factory import build_engine


def _tool_call(call_id: str, name: str, args: dict) -> dict:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
        ],
    }


class FakeLlm:
    """Scripted chat completions: replies[i](request body) gives the i-th assistant message."""

    def __init__(self, replies, delay_s: float = 0.0) -> None:
        self.replies = list(replies)
        self.delay_s = delay_s
        self.requests: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        message = self.replies[min(len(self.requests), len(self.replies)) - 1](body)
        return web.json_response(
            {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": message}]}
        )


@pytest.fixture
async def serve():
    runners = []

    async def start(fake: FakeLlm) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", fake.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for runner in runners:
        await runner.cleanup()


def _engine(shop, store, url: str, timeout_s: float = 5.0) -> LlmEngine:
    tools = ShopTools(shop, store)
    return LlmEngine(
        shop, tools, GroundedEngine(shop, tools), url=url, model="fake", timeout_s=timeout_s
    )


def _tool_results(body: dict) -> list[dict]:
    return [json.loads(m["content"]) for m in body["messages"] if m["role"] == "tool"]


async def test_order_question_calls_order_status_and_answers_with_its_result(shop, store, serve):
    def final(body):
        result = _tool_results(body)[-1]
        return {"role": "assistant", "content": f"Order {result['id']} is {result['status']}."}

    fake = FakeLlm([lambda body: _tool_call("c1", "order_status", {"order_id": "10023"}), final])
    engine = _engine(shop, store, await serve(fake))
    state = ConversationState(customer="buyer")
    # the sync interface, from a worker thread as the session calls it
    answer = await asyncio.to_thread(engine.answer, "Where is my order 10023?", state, "en")

    assert answer.text == "Order 10023 is in_transit."
    assert answer.language == "en" and answer.intent == "llm.tools"
    assert [c.name for c in answer.tool_calls] == ["order_status"]
    assert answer.tool_calls[0].result["status"] == "in_transit"
    assert len(fake.requests) == 2
    first, second = fake.requests
    assert first["model"] == "fake"
    assert {t["function"]["name"] for t in first["tools"]} == {"order_status", "open_ticket"}
    system = first["messages"][0]
    assert system["role"] == "system" and "B-301" in system["content"]
    assert "English" in system["content"]
    tool_msgs = [m for m in second["messages"] if m["role"] == "tool"]
    assert tool_msgs and tool_msgs[0]["tool_call_id"] == "c1"
    assert _tool_results(second)[0]["status"] == "in_transit"
    assert state.order_id == "10023" and state.turns == 1


async def test_open_ticket_twice_gives_one_ticket(shop, store, serve):
    args = {"order_id": "10024", "kind": "exchange", "reason": "wrong colour"}

    def final(body):
        return {"role": "assistant", "content": f"Ticket {_tool_results(body)[-1]['ref']}."}

    fake = FakeLlm(
        [
            lambda body: _tool_call("a", "open_ticket", args),
            final,
            lambda body: _tool_call("b", "open_ticket", args),
            final,
        ]
    )
    engine = _engine(shop, store, await serve(fake))
    state = ConversationState(customer="buyer")
    first = await engine.answer_async("I got the wrong colour, order 10024", state, "en")
    again = await engine.answer_async("Please exchange order 10024", state, "en")

    tickets = store.list()
    assert len(tickets) == 1
    assert tickets[0].order_id == "10024" and tickets[0].kind == "exchange"
    assert first.text == again.text == f"Ticket {tickets[0].ref}."
    assert first.tool_calls[0].result["created"] is True
    assert again.tool_calls[0].result["created"] is False
    # the second turn carries the first one as history
    assert any(m["content"] == first.text for m in fake.requests[2]["messages"][1:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_server_down_falls_back_to_grounded_answer(shop, store, caplog):
    engine = _engine(shop, store, f"http://127.0.0.1:{_free_port()}/v1")
    expected = GroundedEngine(shop, ShopTools(shop, store)).answer(
        "Where is my order 10023?", ConversationState(), "en"
    )
    answer = await asyncio.to_thread(
        engine.answer, "Where is my order 10023?", ConversationState(), "en"
    )
    assert answer.text == expected.text and answer.intent == expected.intent
    assert "llm_failed" in answer.timings_ms
    assert "LLM backend failed" in caplog.text


async def test_timeout_falls_back_to_grounded_answer(shop, store, serve):
    fake = FakeLlm([lambda body: {"role": "assistant", "content": "too late"}], delay_s=1.0)
    engine = _engine(shop, store, await serve(fake), timeout_s=0.3)
    answer = await engine.answer_async("How much is the leather tote bag?", ConversationState())
    assert "159" in answer.text and answer.intent != "llm"
    assert len(fake.requests) == 1


async def test_endless_tool_calls_are_bounded_and_fall_back(shop, store, serve):
    fake = FakeLlm([lambda body: _tool_call("x", "order_status", {"order_id": "10025"})])
    engine = _engine(shop, store, await serve(fake))
    answer = await engine.answer_async("Where is order 10025?", ConversationState(), "en")
    assert len(fake.requests) == engine.max_rounds
    assert answer.intent == "order_status" and "10025" in answer.text


def test_factory_uses_llm_only_when_configured(tmp_path):
    config = AgentConfig()
    config.tickets.db = str(tmp_path / "t.sqlite3")
    config.translate.backend = "none"
    engine, store = build_engine(config)
    store.close()
    assert isinstance(engine, GroundedEngine)
    config.llm.url = "http://127.0.0.1:9/v1"
    engine, store = build_engine(config)
    store.close()
    assert isinstance(engine, LlmEngine)
    assert engine.url == "http://127.0.0.1:9/v1/chat/completions"
