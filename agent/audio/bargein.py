"""Barge-in: is the buyer really talking over the agent, or was that a cough or a click?

Fed one VAD decision per frame. A burst of speech starts at a voiced frame and lasts while the
unvoiced gaps inside it stay short (`gap_ms`); once the burst holds `threshold_ms` of voiced
audio it is a barge-in (reported once per burst). A burst that ends before that was a short
noise: the agent keeps talking, and the burst is reported as an ignored (false) interruption.
Time is counted in audio frames, like the endpointer, so a recording always gives the same
decisions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Burst:
    voiced_ms: int  # voiced audio in the burst so far
    length_ms: int  # from its first voiced frame to now, gaps included


class BargeInDetector:
    def __init__(self, threshold_ms: int = 150, frame_ms: int = 20, gap_ms: int = 60) -> None:
        self.threshold_ms = threshold_ms
        self.frame_ms = frame_ms
        self.gap_frames = max(1, gap_ms // frame_ms)
        self._voiced = 0  # voiced frames in the current burst
        self._frames = 0  # frames since the burst started
        self._gap = 0  # unvoiced frames since the last voiced one
        self._fired = False

    @property
    def in_burst(self) -> bool:
        return self._voiced > 0

    def burst(self) -> Burst:
        return Burst(self._voiced * self.frame_ms, self._frames * self.frame_ms)

    def push(self, voiced: bool) -> tuple[str, Burst] | None:
        """("barge_in", burst) when a burst passes the threshold; ("noise", burst) when a burst
        ends short of it; None otherwise."""
        if voiced:
            self._voiced += 1
            self._frames += 1
            self._gap = 0
            if not self._fired and self._voiced * self.frame_ms >= self.threshold_ms:
                self._fired = True
                return "barge_in", self.burst()
            return None
        if self._voiced == 0:
            return None
        self._frames += 1
        self._gap += 1
        if self._gap <= self.gap_frames:
            return None
        ended = Burst(self._voiced * self.frame_ms, (self._frames - self._gap) * self.frame_ms)
        fired = self._fired
        self.reset()
        return None if fired else ("noise", ended)

    def reset(self) -> None:
        self._voiced = self._frames = self._gap = 0
        self._fired = False
