"""Voice activity detection per 20 ms frame at 16 kHz: is this speech, or just sound?

Two backends behind one interface (`Vad.is_speech(frame)`, one frame of `frame_ms` at 16 kHz):

* `SileroVad` (default): the Silero VAD v6 neural network (MIT), the .onnx file faster-whisper
  ships in its assets, run with onnxruntime (no torch). It tells speech from tones, music,
  keyboard clicks and most coughs, which webrtcvad takes for speech (Chromium's fake microphone
  beep started phantom turns). It reads 512-sample chunks (32 ms) with 64 samples of context and
  keeps its recurrent state between them: one stream per instance. ~0.1 ms a chunk on one core,
  so it runs inline on the event loop like webrtcvad.
* `WebRtcVad`: webrtcvad (the webrtcvad-wheels package), a GMM detector, ~20 us a frame; the
  fallback (`audio.vad = "webrtc"`).

`build_vad(settings)` makes the configured one; a missing model or package fails loudly there.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any, Protocol

import numpy as np

SILERO_CHUNK = 512  # samples at 16 kHz the model reads at a time
SILERO_CONTEXT = 64  # samples of the previous chunk it reads in front of each
SILERO_STATE = (1, 1, 128)  # shape of the LSTM's h and c (v5/v6 models)


class Vad(Protocol):
    sample_rate: int
    frame_ms: int
    # speech this detector needs before its first "speech" (counted toward thresholds such as
    # audio.barge_in_ms, which are meant in speech, not in the detector's voiced frames)
    onset_ms: int

    def is_speech(self, frame: np.ndarray) -> bool: ...


class WebRtcVad:
    """webrtcvad (the webrtcvad-wheels package): a GMM voice detector, ~20 us a frame."""

    def __init__(
        self, aggressiveness: int = 2, sample_rate: int = 16000, frame_ms: int = 20
    ) -> None:
        import webrtcvad  # from webrtcvad-wheels; a missing package fails here, loudly

        if frame_ms not in (10, 20, 30):
            raise ValueError("webrtcvad takes 10, 20 or 30 ms frames")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.onset_ms = 0
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: np.ndarray) -> bool:
        return self._vad.is_speech(
            np.ascontiguousarray(frame, dtype=np.int16).tobytes(), self.sample_rate
        )


class VadModelNotFound(RuntimeError):
    pass


def silero_model_path(configured: str = "") -> Path:
    """The Silero VAD .onnx: `configured` when set, else the one inside faster-whisper."""
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise VadModelNotFound(f"audio.vad_model {path} is not a file")
        return path
    spec = importlib.util.find_spec("faster_whisper")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "assets" / "silero_vad_v6.onnx"
        if path.is_file():
            return path
    raise VadModelNotFound(
        "no Silero VAD model: faster-whisper (which ships assets/silero_vad_v6.onnx) is not "
        'installed; set audio.vad_model to a silero_vad .onnx file or audio.vad = "webrtc"'
    )


@functools.lru_cache(maxsize=4)
def _silero_session(path: str) -> Any:
    """One onnxruntime session per model file, shared by every stream (run() is thread-safe;
    the recurrent state lives in each `SileroVad`)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # a 32 ms chunk is too small to split across cores
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(
        path, sess_options=options, providers=["CPUExecutionProvider"]
    )


class SileroVad:
    """Silero VAD over a stream of frames, with hysteresis: speech starts when the network's
    probability reaches `threshold` and goes on until it falls below `threshold - 0.15` (its
    authors' rule), so a soft syllable inside a word does not end it."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        threshold: float = 0.5,
        sample_rate: int = 16000,
        frame_ms: int = 20,
    ) -> None:
        if sample_rate != 16000:
            raise ValueError("the Silero VAD runs at 16 kHz here")
        if not 0.0 < threshold < 1.0:
            raise ValueError("the Silero VAD threshold is a probability in (0, 1)")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        # the network says "speech" about two chunks into it (measured on espeak-ng and Kokoro
        # questions: 64-80 ms after their first sound, where webrtcvad says so at once)
        self.onset_ms = 2 * SILERO_CHUNK * 1000 // sample_rate
        self.threshold = threshold
        self.release = max(0.01, threshold - 0.15)
        path = Path(model_path) if model_path else silero_model_path()
        self._session = _silero_session(str(path))
        self.probability = 0.0  # the network's latest output
        self.reset()

    def reset(self) -> None:
        """Forget the stream (a new speaker, a new recording)."""
        self._h = np.zeros(SILERO_STATE, np.float32)
        self._c = np.zeros(SILERO_STATE, np.float32)
        self._window = np.zeros(SILERO_CONTEXT + SILERO_CHUNK, np.float32)
        self._filled = 0  # new samples in the window after the context
        self._speech = False
        self.probability = 0.0

    def is_speech(self, frame: np.ndarray) -> bool:
        samples = np.asarray(frame)
        if samples.dtype == np.int16:
            samples = samples.astype(np.float32) / 32768.0
        start = 0
        while start < len(samples):
            take = min(SILERO_CHUNK - self._filled, len(samples) - start)
            at = SILERO_CONTEXT + self._filled
            self._window[at : at + take] = samples[start : start + take]
            self._filled += take
            start += take
            if self._filled == SILERO_CHUNK:
                self._run()
        return self._speech

    def _run(self) -> None:
        out, self._h, self._c = self._session.run(
            None, {"input": self._window.reshape(1, -1), "h": self._h, "c": self._c}
        )
        self.probability = float(out.reshape(-1)[0])
        if self.probability >= self.threshold:
            self._speech = True
        elif self.probability < self.release:
            self._speech = False
        self._window[:SILERO_CONTEXT] = self._window[-SILERO_CONTEXT:]
        self._filled = 0


def build_vad(
    backend: str = "silero",
    *,
    model: str = "",
    threshold: float = 0.5,
    aggressiveness: int = 2,
    sample_rate: int = 16000,
    frame_ms: int = 20,
) -> Vad:
    """The configured VAD for one audio stream ("silero" or "webrtc")."""
    if backend == "silero":
        return SileroVad(silero_model_path(model), threshold, sample_rate, frame_ms)
    if backend == "webrtc":
        return WebRtcVad(aggressiveness, sample_rate, frame_ms)
    raise ValueError(f"unknown VAD backend {backend!r} (silero or webrtc)")
