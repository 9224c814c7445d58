"""Voice activity detection per 20 ms frame at 16 kHz (webrtcvad by default)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Vad(Protocol):
    sample_rate: int
    frame_ms: int

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
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: np.ndarray) -> bool:
        return self._vad.is_speech(
            np.ascontiguousarray(frame, dtype=np.int16).tobytes(), self.sample_rate
        )
