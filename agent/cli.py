"""Command line: ask a question (text or a recording), list tickets, measure the question set.

python -m agent ask "How much is the bag?" [--lang en] [--json]
python -m agent ask --audio IN.wav --out OUT.wav [--lang pt] [--json]
python -m agent chat                      # several turns, context kept
python -m agent tickets [--json] [--status open]
python -m agent eval [--questions FILE] [--json]
python -m agent worker [--url http://127.0.0.1:8080] [--config NODE.toml]   # serve SFU jobs
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .answer import ConversationState
from .config import load_config
from .factory import build_engine


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="agent TOML (default configs/agent.toml)")
    parser.add_argument("--db", help="tickets SQLite file (overrides the config)")
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer one question, typed or recorded")
    ask.add_argument("question", nargs="?", help="the question text")
    ask.add_argument("--lang", help="the buyer's language (en, pt, es); detected if absent")
    ask.add_argument("--json", action="store_true", help="print answer, language, intent, tools")
    ask.add_argument("--audio", help="a WAV recording of the question (any rate, mono or stereo)")
    ask.add_argument("--out", help="write the spoken answer here (48 kHz mono WAV)")
    ask.add_argument("--customer", default="cli", help="who asks (tickets are per customer)")

    sub.add_parser("chat", help="a typed conversation on stdin, context kept between turns")

    tickets = sub.add_parser("tickets", help="list support tickets")
    tickets.add_argument("--json", action="store_true")
    tickets.add_argument("--status", choices=["open", "closed"])

    ev = sub.add_parser("eval", help="accuracy of the answer engine on a question set")
    ev.add_argument("--questions", help="questions JSON (default configs/shop/questions.json)")
    ev.add_argument("--json", action="store_true")

    worker = sub.add_parser("worker", help="take agent jobs from an SFU node (runs until stopped)")
    worker.add_argument("--url", help="the SFU node (default: worker.url in the agent config)")
    worker.add_argument(
        "--config",
        dest="node_config",
        help="the node's TOML, for its API key and secret (default: the development key)",
    )
    worker.add_argument("--agent-config", help="agent TOML (default: the global --config)")
    worker.add_argument("--capacity", type=int, help="jobs at once (default: worker.capacity)")
    worker.add_argument("--kinds", help="comma-separated job kinds (default: worker.kinds)")
    worker.add_argument("--name", help="worker name in the node's listing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = load_config(args.config)
    if args.db:
        config.tickets.db = args.db
        import os

        os.environ.pop("AGENT_TICKETS_DB", None)
    if args.command == "ask":
        return _ask(args, config)
    if args.command == "chat":
        return _chat(config)
    if args.command == "tickets":
        return _tickets(args, config)
    if args.command == "worker":
        from .worker import run_worker

        if args.agent_config:
            config = load_config(args.agent_config)
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
        return run_worker(args.url, args.node_config, config, kinds, args.capacity, args.name)
    return _eval(args, config)


def _ask(args, config) -> int:
    if args.audio:
        from .pipeline import run_file

        result = run_file(config, args.audio, args.out, language=args.lang, customer=args.customer)
        if args.json:
            print(json.dumps(result, ensure_ascii=False, indent=2))
        else:
            for turn in result["turns"]:
                print(f"buyer ({turn['language']}): {turn['transcript']}")
                print(f"agent: {turn['answer']['text']}")
        return 0 if result["turns"] else 1
    if not args.question:
        print("ask: give a question, or --audio FILE", file=sys.stderr)
        return 2
    engine, store = build_engine(config)
    try:
        t0 = time.perf_counter()
        answer = engine.answer(args.question, ConversationState(customer=args.customer), args.lang)
        answer.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
    finally:
        store.close()
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(answer.text)
    return 0


def _chat(config) -> int:
    engine, store = build_engine(config)
    state = ConversationState(customer="chat")
    try:
        for line in sys.stdin:
            if line.strip():
                answer = engine.answer(line.strip(), state)
                print(f"[{answer.language} {answer.intent}] {answer.text}", flush=True)
    finally:
        store.close()
    return 0


def _tickets(args, config) -> int:
    from .answer import TicketStore

    store = TicketStore(config.tickets_db)
    try:
        tickets = store.list(args.status)
    finally:
        store.close()
    if args.json:
        print(json.dumps([t.to_dict() for t in tickets], ensure_ascii=False, indent=2))
        return 0
    if not tickets:
        print("no tickets")
    for t in tickets:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.created_at))
        order = t.order_id or "-"
        reason = t.reason_en or t.reason
        print(
            f"{t.ref}  {t.status:6}  {t.kind:8}  order {order:5}  {created}"
            f"  [{t.language}] {reason}"
        )
    return 0


def _eval(args, config) -> int:
    import tempfile

    from .answer.evaluate import evaluate, load_questions

    with tempfile.TemporaryDirectory() as tmp:
        config.tickets.db = f"{tmp}/eval.sqlite3"
        import os

        os.environ.pop("AGENT_TICKETS_DB", None)
        engine, store = build_engine(config)
        try:
            accuracy, results = evaluate(engine, load_questions(args.questions))
        finally:
            store.close()
    wrong = [r for r in results if not r.correct]
    if args.json:
        print(
            json.dumps(
                {
                    "accuracy": accuracy,
                    "questions": len(results),
                    "wrong": [
                        {"q": r.question["q"], "answer": r.answer.text, "missing": r.missing}
                        for r in wrong
                    ],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        for r in wrong:
            print(
                f"WRONG [{r.question['lang']}] {r.question['q']}\n  -> {r.answer.text}\n"
                f"  missing {r.missing}"
            )
        print(f"accuracy {accuracy:.3f} on {len(results)} questions")
    return 0
