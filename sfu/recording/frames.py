"""Whole VP8 frames from RTP packets (RFC 7741), with loss, reordering and gaps handled.

A frame is the payloads (VP8 payload descriptor stripped) of consecutive sequence numbers
from the packet with S=1/PID=0 to the packet with the marker bit, all sharing one RTP
timestamp. Frames come out in order. Packets may arrive out of order or late (NACK
retransmissions): an incomplete frame waits up to `max_wait_s`, newer complete frames queue
behind it. A frame that never completes, or a frame missing entirely (a sequence gap between
two frames), breaks the decoder's reference chain: from then on only a keyframe is emitted
(and `needs_keyframe` tells the caller to ask the publisher for one). Work per packet is a
dictionary insert and, at a frame's end, one `bytes.join`; memory is bounded by
`max_frames` pending frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Vp8Frame:
    rtp_ts: int
    keyframe: bool
    data: bytes
    arrival_s: float  # when its first packet arrived
    ext_ts: int = 0  # RTP timestamp unwrapped across 32-bit wraps (frames come out in its order)


@dataclass
class _Pending:
    rtp_ts: int
    first_arrival_s: float
    parts: dict[int, bytes] = field(default_factory=dict)  # extended seq -> payload
    start_seq: int | None = None
    end_seq: int | None = None
    keyframe: bool = False

    def complete(self) -> bool:
        s, e = self.start_seq, self.end_seq
        return s is not None and e is not None and e >= s and len(self.parts) == e - s + 1


class Vp8FrameAssembler:
    """Feed `push()` each packet of one VP8 stream; it returns the frames completed by it."""

    def __init__(self, max_wait_s: float = 0.5, max_frames: int = 64) -> None:
        self.max_wait_s = max_wait_s
        self.max_frames = max_frames
        self._pending: dict[int, _Pending] = {}  # extended rtp ts -> frame, in arrival order
        self._last_seq: int | None = None  # extended seq of the newest packet
        self._last_ts_ext: int | None = None
        self._last_ts = 0
        self._emitted_end: int | None = None  # extended seq of the last emitted frame's end
        self._emitted_ts: int | None = None
        self.broken = True  # nothing decodable yet: wait for a keyframe
        self.needs_keyframe = False  # set when a frame was lost; the caller clears it
        self.frames_dropped = 0
        self.frames_emitted = 0

    def reset(self) -> None:
        """Another stream follows (simulcast switch, new SSRC): start over on a keyframe."""
        self._pending.clear()
        self._last_seq = self._last_ts_ext = self._emitted_end = self._emitted_ts = None
        self.broken = True

    def _extend_seq(self, seq: int) -> int:
        last = self._last_seq
        if last is None:
            ext = seq
        else:
            ext = last + ((((seq - last) & 0xFFFF) + 0x8000) & 0xFFFF) - 0x8000
        if last is None or ext > last:
            self._last_seq = ext
        return ext

    def _extend_ts(self, ts: int) -> int:
        last = self._last_ts_ext
        if last is None:
            ext = ts
        else:
            ext = last + ((((ts - self._last_ts) & 0xFFFFFFFF) + 0x80000000) & 0xFFFFFFFF)
            ext -= 0x80000000
        if last is None or ext > last:
            self._last_ts_ext, self._last_ts = ext, ts
        return ext

    def push(
        self,
        seq: int,
        rtp_ts: int,
        marker: bool,
        start_of_frame: bool,
        keyframe: bool,
        payload: bytes,
        now_s: float,
    ) -> list[Vp8Frame]:
        """One packet; `payload` is the VP8 data after the payload descriptor."""
        ext_seq = self._extend_seq(seq)
        ext_ts = self._extend_ts(rtp_ts)
        if self._emitted_end is not None and ext_seq <= self._emitted_end:
            return []  # a duplicate, or a late packet of a frame already written or dropped
        if self._emitted_ts is not None and ext_ts <= self._emitted_ts:
            return []
        frame = self._pending.get(ext_ts)
        if frame is None:
            if len(self._pending) >= self.max_frames:
                self._drop_oldest()
            frame = self._pending[ext_ts] = _Pending(rtp_ts, now_s)
        frame.parts[ext_seq] = payload
        if start_of_frame:
            frame.start_seq = ext_seq
            frame.keyframe = keyframe
        if marker:
            frame.end_seq = ext_seq
        return self._drain(now_s)

    def _drain(self, now_s: float) -> list[Vp8Frame]:
        out: list[Vp8Frame] = []
        pending = self._pending
        while pending:
            ts = min(pending)  # few pending frames: a scan is cheaper than a heap
            frame = pending[ts]
            if not frame.complete():
                if now_s - frame.first_arrival_s <= self.max_wait_s:
                    break
                self._drop_oldest()
                continue
            del pending[ts]
            # a whole frame missing between the last one written and this one?
            gap = self._emitted_end is not None and frame.start_seq != self._emitted_end + 1
            self._emitted_end, self._emitted_ts = frame.end_seq, ts
            if gap and not frame.keyframe:
                self._lost()
            if self.broken and not frame.keyframe:
                self.frames_dropped += 1
                continue
            self.broken = False
            parts = frame.parts
            data = b"".join(parts[s] for s in range(frame.start_seq, frame.end_seq + 1))
            self.frames_emitted += 1
            out.append(Vp8Frame(frame.rtp_ts, frame.keyframe, data, frame.first_arrival_s, ts))
        return out

    def _drop_oldest(self) -> None:
        ts = min(self._pending)
        frame = self._pending.pop(ts)
        self._emitted_ts = ts
        if frame.end_seq is not None:
            self._emitted_end = frame.end_seq
        elif frame.parts:
            self._emitted_end = max(frame.parts)
        self.frames_dropped += 1
        self._lost()

    def _lost(self) -> None:
        if not self.broken:
            self.broken = True
        self.needs_keyframe = True
