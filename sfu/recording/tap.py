"""Taps: what a recording attaches to a Producer, beside its subscribers' Forwarders.

A tap sits in `Producer.forwarders` and gets each packet through the same
`forward(data, h, keyframe, now_s, enc, vp8)` call, so a node that records nothing does no
extra work per packet. Per packet a tap does a few attribute reads and a dictionary insert;
frames go to the writer's queue, muxed in its thread.

Simulcast: the video tap records the top layer that is being sent. When a higher layer comes
back or the current one stops, it asks the publisher for a keyframe of the new layer and
switches on that keyframe, never in the middle of a picture chain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .frames import Vp8FrameAssembler
from .timeline import Timeline

if TYPE_CHECKING:
    from ..media.encoding import Encoding
    from ..media.producer import Producer
    from ..media.rtp import RtpHeader
    from ..media.vp8 import Vp8Info

LAYER_SILENT_S = 0.5  # a simulcast layer with no packet for this long is not being sent
LAYER_CHECK_S = 0.25


class FrameSink(Protocol):
    """The recording a tap feeds (see recorder.Recording)."""

    def on_frame(
        self, tap: RecordingTap, rtp_ts: int, arrival_s: float, data: bytes, keyframe: bool
    ) -> None: ...


@dataclass
class _Label:
    """What the Producer reads from a forwarder's downtrack."""

    mid: str  # logged when a forwarder fails
    red_source_pt: int = -1  # RED audio: the tap takes the unwrapped (plain Opus) packets


class RecordingTap:
    """Base: attach/detach on a Producer; subclasses turn packets into frames."""

    def __init__(self, producer: Producer, sink: FrameSink, stream: int) -> None:
        self.producer = producer
        self.sink = sink
        self.stream = stream  # index of this track in the file
        self.timeline = Timeline(producer.codec.clock_rate)
        self.downtrack = _Label(f"recording:{producer.id}")
        self.closed = False
        self.packets = 0

    def attach(self) -> None:
        self.producer.attach(self)  # type: ignore[arg-type]

    def close(self) -> None:
        """Stop receiving packets (also called by the Producer when it is unpublished)."""
        if self.closed:
            return
        self.closed = True
        self.producer.detach(self)  # type: ignore[arg-type]


class AudioTap(RecordingTap):
    """Opus: every RTP payload is one Opus packet, recorded as it is."""

    def forward(
        self,
        data: bytes,
        h: RtpHeader,
        keyframe: bool,
        now_s: float,
        enc: Encoding | None = None,
        vp8: Vp8Info | None = None,
    ) -> None:
        self.packets += 1
        end = len(data) - h.padding_size
        if end > h.payload_offset:
            self.sink.on_frame(self, h.timestamp, now_s, data[h.payload_offset : end], True)


class VideoTap(RecordingTap):
    """VP8: whole frames of the top layer being sent; keyframe asked for when one is needed."""

    def __init__(self, producer: Producer, sink: FrameSink, stream: int) -> None:
        super().__init__(producer, sink, stream)
        self.assembler = Vp8FrameAssembler()
        n = len(producer.layers)
        self.last_seen = [0.0] * n  # per spatial layer: last packet arrival
        self.current = -1  # spatial layer being recorded (-1: none yet)
        self.target = n - 1  # spatial layer wanted
        self.switches = 0
        self._next_check = 0.0

    def start(self) -> None:
        """Ask for a keyframe now: the file starts on one."""
        now = time.monotonic()
        self._next_check = now + LAYER_CHECK_S  # first hear which layers are being sent
        self.producer.want_keyframe(now, self.target)

    def forward(
        self,
        data: bytes,
        h: RtpHeader,
        keyframe: bool,
        now_s: float,
        enc: Encoding | None = None,
        vp8: Vp8Info | None = None,
    ) -> None:
        if vp8 is None:
            return
        self.packets += 1
        spatial = enc.spatial if enc is not None else 0
        self.last_seen[spatial] = now_s
        if now_s >= self._next_check:
            self._check_layers(now_s)
        if spatial != self.current:
            if spatial != self.target or not keyframe:
                return
            self._switch(spatial)  # the target layer's keyframe: record it from here
        assembler = self.assembler
        end = len(data) - h.padding_size
        start = h.payload_offset + vp8.header_size
        frames = assembler.push(
            h.sequence_number,
            h.timestamp,
            h.marker,
            vp8.start_of_frame,
            keyframe,
            data[start:end],
            now_s,
        )
        if assembler.needs_keyframe:
            assembler.needs_keyframe = False
            self.producer.want_keyframe(now_s, self.current)
        for frame in frames:
            self.sink.on_frame(self, frame.rtp_ts, frame.arrival_s, frame.data, frame.keyframe)

    def _switch(self, spatial: int) -> None:
        if self.current >= 0:
            self.switches += 1
        self.current = spatial
        self.assembler.reset()
        self.timeline.reanchor()  # each layer has its own RTP clock offset

    def _check_layers(self, now_s: float) -> None:
        """Pick the top layer that is being sent; ask for its keyframe when it changes."""
        self._next_check = now_s + LAYER_CHECK_S
        seen = self.last_seen
        top = next(
            (i for i in range(len(seen) - 1, -1, -1) if now_s - seen[i] < LAYER_SILENT_S), -1
        )
        if top < 0 or top == self.target:
            return
        self.target = top
        if top != self.current:
            self.producer.want_keyframe(now_s, top)
