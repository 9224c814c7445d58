"""Pre-encoded media for synthetic publishers: encode once, replay as `av.Packet`s.

aiortc's RTCRtpSender packetises an `av.Packet` without encoding it, so a publisher replaying
a short clip in a loop costs little CPU: the load tester measures the node, not itself.
"""

from __future__ import annotations

import asyncio
import fractions
import time

FPS = 30
VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
AUDIO_FRAME = 960  # 20 ms


def encode_video(
    seconds: float, width: int = 640, height: int = 360, bitrate: int = 1_000_000, gop_s=2.0
) -> list[bytes]:
    """A moving pattern encoded once with libvpx (CBR, realtime): one entry per frame."""
    import av
    import numpy as np

    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.bit_rate = bitrate
    codec.framerate = fractions.Fraction(FPS, 1)
    codec.time_base = fractions.Fraction(1, FPS)
    codec.gop_size = int(gop_s * FPS)
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
        "undershoot-pct": "100",
        "overshoot-pct": "15",
    }
    rng = np.random.default_rng(7)
    # smooth texture (blurred blocks): realistic keyframe sizes, unlike white noise
    blocks = rng.integers(0, 256, (height // 8 * 2 + 2, width // 8 * 2 + 2)).astype(np.float32)
    texture = np.kron(blocks, np.ones((8, 8), np.float32))
    kernel = np.ones(9, np.float32) / 9
    for axis in (0, 1):
        texture = np.apply_along_axis(lambda r: np.convolve(r, kernel, "same"), axis, texture)
    texture = texture.astype(np.uint8)
    frames: list[bytes] = []
    for i in range(int(seconds * FPS)):
        oy = int(height / 2 + height / 2 * np.sin(i / 40))
        ox = (i * 3) % width
        y = texture[oy : oy + height, ox : ox + width].copy()
        by, bx = (i * 4) % max(1, height - 60), (i * 7) % max(1, width - 80)
        y[by : by + 60, bx : bx + 80] = 255
        y += rng.integers(0, 6, (height, width), dtype=np.uint8)
        u = np.full((height // 2, width // 2), (i * 2) % 256, np.uint8)
        v = np.full((height // 2, width // 2), 128, np.uint8)
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane, data in zip(frame.planes, (y, u, v), strict=True):
            plane.update(np.ascontiguousarray(data))
        frame.pts = i
        frame.time_base = codec.time_base
        frames.extend(bytes(p) for p in codec.encode(frame))
    frames.extend(bytes(p) for p in codec.encode(None))
    return frames


def encode_audio(seconds: float, frequency: float = 440.0) -> list[bytes]:
    """A tone with a little noise encoded once with libopus (20 ms packets)."""
    import av
    import numpy as np

    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = 48000
    codec.format = "s16"
    codec.layout = "stereo"
    codec.sample_rate = AUDIO_RATE
    codec.time_base = fractions.Fraction(1, AUDIO_RATE)
    rng = np.random.default_rng(11)
    packets: list[bytes] = []
    for i in range(int(seconds * AUDIO_RATE / AUDIO_FRAME)):
        t = (np.arange(AUDIO_FRAME) + i * AUDIO_FRAME) / AUDIO_RATE
        wave = 6000 * np.sin(2 * np.pi * frequency * t) + rng.normal(0, 300, AUDIO_FRAME)
        stereo = np.repeat(wave.astype(np.int16), 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = i * AUDIO_FRAME
        frame.time_base = codec.time_base
        packets.extend(bytes(p) for p in codec.encode(frame))
    return packets


def looping_track(kind: str, payloads: list[bytes], rate_hz: float, clock_hz: int):
    """A track whose recv() returns the pre-encoded packets in real time, looping; pts keep
    increasing across loops so RTP timestamps do too."""
    import av
    from aiortc import MediaStreamTrack

    step = int(clock_hz / rate_hz)
    time_base = fractions.Fraction(1, clock_hz)

    class LoopingTrack(MediaStreamTrack):
        def __init__(self) -> None:
            super().__init__()
            self.kind = kind
            self._n = 0
            self._start: float | None = None

        async def recv(self) -> av.Packet:
            if self._start is None:
                self._start = time.monotonic()
            delay = self._start + self._n / rate_hz - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            packet = av.Packet(payloads[self._n % len(payloads)])
            packet.pts = self._n * step
            packet.time_base = time_base
            self._n += 1
            return packet

    return LoopingTrack()
