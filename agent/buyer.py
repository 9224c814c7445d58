"""A scripted buyer: a real WebRTC participant that speaks recordings to the agent and times
what comes back. The end-to-end tests and `benchmarks/agent_latency.py` use it; a shop can use
it to try its agent without a browser.

It publishes one audio track (an `AgentVoice`: silence until it is told to say something),
receives the agent's voice, and keeps per received 20 ms frame its arrival time and loudness,
plus every data message with its arrival time. Times are `time.monotonic()` on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sfu.client.room_client import RemoteTrack, RoomClient
from sfu.media.peer import NetworkSettings

from .audio.frames import WEBRTC_RATE, frames_of, read_audio
from .voice import AgentVoice, low_latency_receiver

AUDIBLE_RMS = 150.0  # int16 RMS of a received frame that counts as the agent talking


@dataclass
class Heard:
    at: float  # monotonic arrival of the decoded frame
    rms: float


@dataclass
class Said:
    start: float  # first frame of the clip handed to the sender
    end: float  # end of its last frame


def speech_clip(text: str, voice: str, wpm: int = 150, rate: int = WEBRTC_RATE) -> np.ndarray:
    """Mono int16 speech from espeak-ng, leading and trailing silence cut off."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "clip.wav"
        subprocess.run(
            [binary, "-v", voice, "-s", str(wpm), "-w", str(wav), text], check=True, timeout=30
        )
        return trim_silence(read_audio(wav, rate))


def trim_silence(samples: np.ndarray, threshold: int = 300) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    if len(loud) == 0:
        return samples
    return samples[loud[0] : loud[-1] + 1]


def mono(frame) -> np.ndarray:
    """A decoded aiortc audio frame (s16, mono or interleaved stereo) as mono int16."""
    samples = frame.to_ndarray().reshape(-1)
    channels = len(frame.layout.channels)
    if channels > 1 and not frame.format.is_planar:
        samples = samples.reshape(-1, channels)[:, 0]
    elif channels > 1:
        samples = frame.to_ndarray()[0]
    return samples.astype(np.int16)


class Buyer:
    def __init__(self, client: RoomClient, voice: AgentVoice, keep_audio: bool = False) -> None:
        self.client = client
        self.voice = voice
        self.keep_audio = keep_audio
        self.heard: list[Heard] = []
        self.audio: list[tuple[float, np.ndarray]] = []  # (arrival, 48 kHz mono) if keep_audio
        self.messages: list[tuple[float, str, dict, str]] = []  # (at, topic, payload, from)
        self.agent_track: RemoteTrack | None = None
        self._reader: asyncio.Task | None = None
        self._message_event = asyncio.Event()
        client.on("data", self._on_data)

    @classmethod
    async def connect(
        cls,
        url: str,
        token: str,
        network: NetworkSettings,
        name: str = "Buyer",
        keep_audio: bool = False,
    ) -> Buyer:
        voice = AgentVoice(max_queued=2)
        client = await RoomClient.connect(
            url, token, name=name, metadata={"role": "buyer"}, network=network, publish=[voice]
        )
        return cls(client, voice, keep_audio)

    def _on_data(self, message: dict) -> None:
        payload = message.get("payload")
        if isinstance(payload, dict):
            self.messages.append(
                (time.monotonic(), message.get("topic", ""), payload, message.get("from", ""))
            )
            self._message_event.set()

    # -- the agent's side ------------------------------------------------------------------------

    async def wait_for_agent(self, timeout: float = 30.0, low_latency: bool = True) -> RemoteTrack:
        """Wait for the agent's voice track and start timing every frame of it.

        `low_latency`: play out with a 1-frame jitter buffer (aiortc's default holds 4 frames,
        80 ms; a browser on a clean path holds about one or two)."""
        deadline = time.monotonic() + timeout
        while self.agent_track is None:
            for track in self.client.remote_tracks.values():
                if track.kind == "audio" and track.publisher.startswith("agent"):
                    self.agent_track = track
                    break
            else:
                if time.monotonic() > deadline:
                    raise TimeoutError("no agent voice track arrived")
                await asyncio.sleep(0.05)
        if low_latency and self.client.subscriber is not None:
            for receiver in self.client.subscriber.pc.getReceivers():
                if receiver.track is self.agent_track.track:
                    low_latency_receiver(receiver)
        self._reader = asyncio.ensure_future(self._read(self.agent_track))
        return self.agent_track

    async def _read(self, remote: RemoteTrack) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await remote.track.recv()
                now = time.monotonic()
                samples = mono(frame)
                x = samples.astype(np.float32)
                self.heard.append(Heard(now, float(np.sqrt(np.mean(x * x))) if x.size else 0.0))
                if self.keep_audio:
                    self.audio.append((now, samples))

    def first_audible(self, after: float) -> float | None:
        for h in self.heard:
            if h.at > after and h.rms >= AUDIBLE_RMS:
                return h.at
        return None

    def audible_between(self, start: float, end: float) -> bool:
        return any(start <= h.at <= end and h.rms >= AUDIBLE_RMS for h in self.heard)

    def stopped_at(self, after: float, silence_s: float = 0.5) -> float | None:
        """Arrival of the first silent frame after `after` that starts `silence_s` of silence."""
        candidate = None
        for h in self.heard:
            if h.at <= after:
                continue
            if h.rms >= AUDIBLE_RMS:
                candidate = None
            elif candidate is None:
                candidate = h.at
            elif h.at - candidate >= silence_s:
                return candidate
        return None

    async def wait_message(
        self, topic: str, predicate=None, after: float = 0.0, timeout: float = 20.0
    ) -> tuple[float, dict]:
        """The first data message on `topic` received after `after` that matches."""
        deadline = time.monotonic() + timeout
        while True:
            for at, t, payload, _ in self.messages:
                if at >= after and t == topic and (predicate is None or predicate(payload)):
                    return at, payload
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {topic!r} message matching in {timeout:g} s")
            self._message_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._message_event.wait(), remaining)

    def recording(self, start: float, end: float | None = None) -> np.ndarray:
        """The agent's voice received between two times (keep_audio=True), 48 kHz mono."""
        parts = [s for at, s in self.audio if at >= start and (end is None or at <= end)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def messages_on(self, topic: str, after: float = 0.0) -> list[dict[str, Any]]:
        return [p for at, t, p, _ in self.messages if t == topic and at >= after]

    # -- speaking --------------------------------------------------------------------------------

    async def say(self, samples: np.ndarray) -> Said:
        """Speak a 48 kHz clip in real time; returns when its last frame went out."""
        generation = self.voice.begin()
        for frame in frames_of(samples, WEBRTC_RATE, self.voice.frame_ms):
            if not await self.voice.put(frame, generation):
                break
        await self.voice.drained(generation)
        start = self.voice.first_sent_at or time.monotonic()
        end = (self.voice.last_sent_at or start) + self.voice.frame_ms / 1000
        return Said(start, end)

    async def type(self, text: str, language: str | None = None) -> float:
        """Ask by typing (data topic "ask"); returns when it was sent."""
        payload: dict[str, Any] = {"text": text}
        if language:
            payload["language"] = language
        sent = time.monotonic()
        await self.client.send_data(payload, topic="ask")
        return sent

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.client.leave()
