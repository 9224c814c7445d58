#!/usr/bin/env python3
"""Turn-taking benchmark: does the agent cut buyers off, hear words in noise, or stop for "uh-huh"?

    .venv/bin/python benchmarks/agent_turns.py --json build/agent_turns.json
    .venv/bin/python benchmarks/agent_turns.py --quick --json build/agent_turns-quick.json

Offline and deterministic (the audio clock, no network): the agent's own stages (InputStage,
VAD, endpointing, Whisper base, the answer engine's judgements) over speech made before the run
(benchmarks/speech.py: espeak-ng in English, Kokoro-82M in Portuguese and Spanish) and sounds
made with numpy (benchmarks/sounds.py). Network timings (voice to voice, barge-in) are
benchmarks/agent_latency.py's.

Figures (under "metrics" in the JSON):
* cut_off_rate: questions spoken with a 0.4-1.0 s pause mid-sentence that were split or
  answered before the buyer finished (more than one answer, or the answer to the first part);
  target <= 0.05. cut_off_rate_silence_only: the same questions with the end of turn of the
  silence timer alone (what the agent did before), for comparison;
* phantom_turns: answers given to non-speech sound (tones, beeps, a buzzer, music, typing, a
  cough); target 0. phantom_turns_webrtcvad: the same with the webrtcvad fallback;
* false_interruption_rate: backchannels ("uh-huh", "sim", "vale" …) and short noises played
  over the agent that stopped it, over all of them; target < 0.05. real_interruptions_obeyed:
  questions and objections over the agent that did stop it (target 1.0);
* endpointing_ms_p50: end of speech -> end of turn on complete questions (300 ms: today's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.answer import ConversationState  # noqa: E402
from agent.audio.bargein import BargeInDetector  # noqa: E402
from agent.audio.endpoint import TurnEnded  # noqa: E402
from agent.audio.frames import STT_RATE, WEBRTC_RATE, frames_of, resample  # noqa: E402
from agent.config import AgentConfig  # noqa: E402
from agent.pipeline import VoicePipeline, run_recording  # noqa: E402
from benchmarks.sounds import noises  # noqa: E402
from benchmarks.speech import question_clip  # noqa: E402

# (language, first part, second part, a fact the whole question's answer holds)
PAUSED_QUESTIONS = [
    ("en", "How much is the", "leather tote bag?", "159"),
    ("en", "Where is my order", "one zero zero two three?", "10023"),
    ("en", "What colours does the", "linen wrap dress come in?", "navy"),
    ("pt", "Quanto custa a", "bolsa de couro?", "159"),
    ("pt", "De que material é feito o", "vestido de linho?", "linho"),
    ("es", "¿Cuánto cuesta el", "bolso de cuero?", "159"),
    ("es", "¿De qué material es el", "vestido de lino?", "lino"),
]
PAUSES_S = (0.4, 0.7, 1.0)
COMPLETE_QUESTIONS = [
    ("en", "How much is the leather tote bag?"),
    ("pt", "Quanto custa a bolsa de couro?"),
    ("es", "¿El reloj es resistente al agua?"),
]
BACKCHANNELS = [
    ("en", "Uh-huh."),
    ("en", "Okay."),
    ("en", "Yeah."),
    ("en", "Right."),
    ("pt", "Sim."),
    ("pt", "Certo."),
    ("pt", "Aham."),
    ("es", "Vale."),
    ("es", "Ajá."),
    ("es", "Claro."),
]
INTERRUPTIONS = [
    ("en", "Wait, how much is it?"),
    ("en", "No, the black one."),
    ("pt", "Espera, quanto custa a bolsa?"),
    ("es", "No, el bolso negro."),
]


def _silence(seconds: float, rate: int = WEBRTC_RATE) -> np.ndarray:
    return np.zeros(int(rate * seconds), np.int16)


def _clip(text: str, lang: str) -> np.ndarray:
    return question_clip(text, lang, WEBRTC_RATE)[0]


def pipeline_for(vad: str, cache: str, tickets: str) -> VoicePipeline:
    config = AgentConfig()
    config.stt.cache_dir = cache
    config.tickets.db = tickets
    config.audio.vad = vad
    return VoicePipeline.from_config(config, warm_up=False)


def cut_offs(pipeline: VoicePipeline, quick: bool, silence_only: bool = False) -> dict:
    """Questions with a pause mid-sentence: one answer to the whole question, or cut off."""
    saved = pipeline.config.audio.unfinished_wait_ms
    if silence_only:  # the end of turn before this change: the silence timer alone
        pipeline.config.audio.unfinished_wait_ms = 0
    cases = PAUSED_QUESTIONS[::3] if quick else PAUSED_QUESTIONS
    pauses = PAUSES_S[1:2] if quick else PAUSES_S
    rows = []
    try:
        for lang, before, after, fact in cases:
            for pause in pauses:
                audio = np.concatenate(
                    [_silence(0.3), _clip(before, lang), _silence(pause), _clip(after, lang)]
                    + [_silence(0.5)]
                )
                results, totals = run_recording(pipeline, audio, ConversationState(lang))
                cut = len(results) != 1
                rows.append(
                    {
                        "language": lang,
                        "pause_s": pause,
                        "question": f"{before} … {after}",
                        "answers": len(results),
                        "cut_off": cut,
                        "fact_in_answer": any(fact in r.answer.text for r in results),
                        "heard": [r.transcript.text for r in results],
                    }
                )
    finally:
        pipeline.config.audio.unfinished_wait_ms = saved
    return {
        "rate": sum(r["cut_off"] for r in rows) / len(rows),
        "fact_rate": sum(r["fact_in_answer"] for r in rows) / len(rows),
        "rows": rows,
    }


def phantoms(pipeline: VoicePipeline) -> dict:
    """Room sounds played to the agent: how many were answered."""
    rows = {}
    for name, sound in noises(WEBRTC_RATE).items():
        audio = np.concatenate([_silence(0.3), sound, _silence(0.5)])
        results, totals = run_recording(pipeline, audio, ConversationState(name))
        rows[name] = {"turns_cut": totals["turns"], "answered": len(results)}
    return {"answered": sum(r["answered"] for r in rows.values()), "rows": rows}


def over_the_agent(pipeline: VoicePipeline, audio48k: np.ndarray, lang: str) -> dict:
    """What the session does with this sound over the agent's voice: nothing (no barge-in),
    pause then resume (backchannel, noise), or stop (interruption)."""
    audio16k = resample(np.concatenate([_silence(0.2), audio48k, _silence(0.6)]), 48000, 16000)
    a = pipeline.config.audio
    endpointer = pipeline.new_endpointer()
    onset = getattr(endpointer.vad, "onset_ms", 0)
    detector = BargeInDetector(max(a.frame_ms, a.barge_in_ms - onset), a.frame_ms, 60)
    paused = stopped_early = False
    turn: TurnEnded | None = None
    for frame in frames_of(audio16k, STT_RATE, a.frame_ms):
        events = endpointer.push(frame)
        verdict = detector.push(endpointer.voiced_ms > 0)
        paused = paused or (verdict is not None and verdict[0] == "barge_in")
        if paused and endpointer.voiced_in_turn_ms > a.backchannel_max_ms:
            stopped_early = True
        turn = next((e for e in events if isinstance(e, TurnEnded)), turn)
    if not paused:
        return {"outcome": "kept_talking", "heard": ""}
    if stopped_early or turn is None:
        return {"outcome": "stopped", "heard": ""}
    kind, transcript = pipeline.hear_over_agent(turn.audio, turn.voiced_ms, lang)
    outcome = "stopped" if kind == "interruption" else f"resumed ({kind})"
    return {"outcome": outcome, "heard": transcript.text}


def interruptions(pipeline: VoicePipeline, quick: bool) -> dict:
    backchannels = BACKCHANNELS[::2] if quick else BACKCHANNELS
    rng = np.random.default_rng(3)
    click = (rng.uniform(-1, 1, 240) * np.hanning(240) * 30000).astype(np.int16)
    n = WEBRTC_RATE * 60 // 1000
    knock = (rng.normal(0, 0.35, n) * np.exp(-np.linspace(0, 5, n)) * 30000).astype(np.int16)
    sounds = noises(WEBRTC_RATE)
    false_rows = [
        {"said": text, "language": lang, **over_the_agent(pipeline, _clip(text, lang), lang)}
        for lang, text in backchannels
    ]
    for name, sound in (("click", click), ("knock", knock), ("cough", sounds["cough"])):
        false_rows.append({"said": name, "language": "en", **over_the_agent(pipeline, sound, "en")})
    real = INTERRUPTIONS[::2] if quick else INTERRUPTIONS
    real_rows = [
        {"said": text, "language": lang, **over_the_agent(pipeline, _clip(text, lang), lang)}
        for lang, text in real
    ]
    return {
        "false_rate": sum(r["outcome"] == "stopped" for r in false_rows) / len(false_rows),
        "obeyed": sum(r["outcome"] == "stopped" for r in real_rows) / len(real_rows),
        "false_rows": false_rows,
        "real_rows": real_rows,
    }


def endpointing(pipeline: VoicePipeline) -> dict:
    values = []
    for lang, text in COMPLETE_QUESTIONS:
        audio = np.concatenate([_silence(0.3), _clip(text, lang), _silence(0.5)])
        results, _ = run_recording(pipeline, audio, ConversationState(lang))
        values += [r.timings_ms["endpointing"] for r in results]
    return {"p50": statistics.median(values) if values else None, "values": values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset (< 60 s)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    cache = os.environ.get("AGENT_CACHE_DIR") or str(AgentConfig().cache_dir)
    with tempfile.TemporaryDirectory(prefix="agent-turns-") as tmp:
        silero = pipeline_for("silero", cache, f"{tmp}/s.sqlite3")
        webrtc = pipeline_for("webrtc", cache, f"{tmp}/w.sqlite3")
        try:
            cut = cut_offs(silero, args.quick)
            cut_before = cut_offs(silero, args.quick, silence_only=True)
            phantom = phantoms(silero)
            phantom_webrtc = phantoms(webrtc)
            inter = interruptions(silero, args.quick)
            ends = endpointing(silero)
        finally:
            silero.close()
            webrtc.close()
    metrics = {
        "cut_off_rate": cut["rate"],
        "cut_off_rate_silence_only": cut_before["rate"],
        "paused_questions_answered_with_fact": cut["fact_rate"],
        "phantom_turns": phantom["answered"],
        "phantom_turns_webrtcvad": phantom_webrtc["answered"],
        "false_interruption_rate": inter["false_rate"],
        "real_interruptions_obeyed": inter["obeyed"],
        "endpointing_ms_p50": ends["p50"],
    }
    out: dict[str, Any] = {
        "benchmark": "agent_turns",
        "quick": args.quick,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "seconds": round(time.perf_counter() - t0, 1),
        "metrics": metrics,
        "cut_off": cut["rows"],
        "cut_off_silence_only": cut_before["rows"],
        "phantoms": phantom["rows"],
        "phantoms_webrtcvad": phantom_webrtc["rows"],
        "over_the_agent": inter["false_rows"] + inter["real_rows"],
    }
    print(f"{'metric':40s} value")
    for name, value in metrics.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{name:40s} {shown}")
    print("\nover the agent:")
    for row in out["over_the_agent"]:
        print(f"  {row['language']} {row['said']:32s} {row['outcome']:28s} {row['heard']!r}")
    print("\npaused questions:")
    for row in cut["rows"]:
        print(f"  {row['language']} {row['pause_s']:.1f}s {row['question']:48s} {row['heard']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
