"""Endpointing: turns per-frame VAD decisions into 'speech started' and 'turn ended' events.

Time is counted in audio (frames pushed), not wall clock, so the same recording always gives the
same turns. A turn ends after `end_of_turn_silence_ms` of silence (default 300 ms); the turn's
audio starts a little before speech was detected (pre-roll) so Whisper hears the first syllable.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .vad import Vad


@dataclass
class SpeechStarted:
    at_ms: float  # audio time of the first voiced frame


@dataclass
class TurnEnded:
    audio: np.ndarray  # int16 at the VAD rate, pre-roll included
    start_ms: float
    speech_end_ms: float  # audio time of the last voiced frame's end
    detected_ms: float  # audio time when the silence was long enough
    voiced_ms: int = 0  # voiced audio in the turn


class Endpointer:
    def __init__(
        self,
        vad: Vad,
        speech_start_ms: int = 60,
        end_of_turn_silence_ms: int = 300,
        max_turn_s: float = 15.0,
        pre_roll_ms: int = 200,
        min_voiced_ms: int = 120,
    ) -> None:
        self.vad = vad
        self.frame_ms = vad.frame_ms
        self.start_frames = max(1, speech_start_ms // self.frame_ms)
        self.end_frames = max(1, end_of_turn_silence_ms // self.frame_ms)
        self.max_frames = int(max_turn_s * 1000 / self.frame_ms)
        # webrtcvad keeps saying "voiced" for ~60-80 ms after a click: a turn needs more than that
        self.min_voiced_frames = max(1, min_voiced_ms // self.frame_ms)
        self._voiced_in_turn = 0
        self._pre_roll: deque[np.ndarray] = deque(maxlen=max(1, pre_roll_ms // self.frame_ms))
        self._frames: list[np.ndarray] = []
        self._in_turn = False
        self._voiced_run = 0
        self._silence_run = 0
        self._clock = 0  # frames pushed so far
        self._turn_start = 0
        self._last_voiced_end = 0
        self.voiced_ms = 0.0  # length of the current run of speech (for barge-in)

    @property
    def in_turn(self) -> bool:
        return self._in_turn

    @property
    def voiced_in_turn_ms(self) -> int:
        """Voiced audio in the open turn so far (0 outside a turn)."""
        return self._voiced_in_turn * self.frame_ms if self._in_turn else 0

    def push(self, frame: np.ndarray) -> list[SpeechStarted | TurnEnded]:
        """Feed one frame (frame_ms at the VAD's rate); returns the events it caused."""
        voiced = self.vad.is_speech(frame)
        self._clock += 1
        events: list[SpeechStarted | TurnEnded] = []
        if voiced:
            self._voiced_run += 1
            self._silence_run = 0
            self._last_voiced_end = self._clock
        else:
            self._voiced_run = 0
            self._silence_run += 1
        self.voiced_ms = self._voiced_run * self.frame_ms
        if not self._in_turn:
            self._pre_roll.append(frame)
            if self._voiced_run >= self.start_frames:
                self._in_turn = True
                self._voiced_in_turn = self._voiced_run
                self._frames = list(self._pre_roll)
                self._turn_start = self._clock - len(self._frames)
                events.append(SpeechStarted((self._clock - self._voiced_run) * self.frame_ms))
            return events
        self._frames.append(frame)
        self._voiced_in_turn += voiced
        if self._silence_run >= self.end_frames or len(self._frames) >= self.max_frames:
            ended = self._end()
            if ended is not None:
                events.append(ended)
        return events

    def current_audio(self) -> np.ndarray | None:
        """The open turn's audio so far (pre-roll included), or None outside a turn."""
        if not self._in_turn or not self._frames:
            return None
        return np.concatenate(self._frames).astype(np.int16)

    def flush(self) -> list[TurnEnded]:
        """End a turn still open at the end of a recording."""
        ended = self._end() if self._in_turn else None
        return [ended] if ended is not None else []

    def reset(self) -> None:
        self._in_turn = False
        self._frames = []
        self._pre_roll.clear()
        self._voiced_run = self._silence_run = 0

    def _end(self) -> TurnEnded | None:
        """The finished turn, or None for a blip (click, knock) too short to be speech."""
        if self._voiced_in_turn < self.min_voiced_frames:
            self.reset()
            return None
        audio = np.concatenate(self._frames).astype(np.int16)
        event = TurnEnded(
            audio=audio,
            start_ms=self._turn_start * self.frame_ms,
            speech_end_ms=self._last_voiced_end * self.frame_ms,
            detected_ms=self._clock * self.frame_ms,
            voiced_ms=self._voiced_in_turn * self.frame_ms,
        )
        self._in_turn = False
        self._frames = []
        self._pre_roll.clear()
        return event
