"""The muxer: frames -> a WebM (Matroska) file with PyAV, in its own thread.

The event loop only queues `(stream, bytes, pts_ms, keyframe)`; the thread muxes them without
decoding or encoding anything. Clusters close every `cluster_ms` (FFmpeg's matroska
`cluster_time_limit`) and every packet is flushed to the file, so a process killed mid-show
leaves a file that plays up to its last closed cluster. A clean stop writes the cues (seeking)
and the duration. A write error (disk full, I/O error) stops the writer: `error` says why and
`on_error` is called from the thread; nothing is retried.
"""

from __future__ import annotations

import fractions
import logging
import queue
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MS = fractions.Fraction(1, 1000)


@dataclass(frozen=True)
class StreamSpec:
    """One track of the file."""

    kind: str  # "video" | "audio"
    codec: str  # "vp8" | "opus"
    width: int = 0
    height: int = 0
    channels: int = 2
    sample_rate: int = 48000


def opus_head(channels: int, sample_rate: int) -> bytes:
    """The Opus identification header (RFC 7845 5.1), Matroska's CodecPrivate for Opus."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 312, sample_rate, 0, 0)


class MkvWriter:
    """Writes queued frames to `path`; `put()` never blocks, `close()` waits for the thread."""

    def __init__(
        self,
        path: Path,
        streams: list[StreamSpec],
        *,
        cluster_ms: int = 1000,
        max_queue: int = 2000,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.streams = streams
        self.cluster_ms = cluster_ms
        self.on_error = on_error
        self.error: str | None = None
        self.frames_written = [0] * len(streams)
        self.last_pts_ms = [-1] * len(streams)
        self.bytes_queued = 0
        self.dropped = 0  # frames refused because the queue was full
        self._queue: queue.Queue = queue.Queue(max_queue)
        self._thread = threading.Thread(target=self._run, name=f"mkv:{path.name}", daemon=True)
        self._thread.start()

    def put(self, stream: int, data: bytes, pts_ms: int, keyframe: bool) -> bool:
        """Queue a frame; False if the writer failed or is behind (the frame is dropped)."""
        if self.error is not None:
            return False
        try:
            self._queue.put_nowait((stream, data, pts_ms, keyframe))
        except queue.Full:
            self.dropped += 1
            return False
        self.bytes_queued += len(data)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, finish the file (cues, duration), and end the thread."""
        while True:
            try:
                self._queue.put(None, timeout=0.5)
                break
            except queue.Full:
                if not self._thread.is_alive():
                    break
        self._thread.join(timeout_s)

    # -- the thread ----------------------------------------------------------------------------

    def _open(self):
        import av

        options = {
            "cluster_time_limit": str(self.cluster_ms),
            "flush_packets": "1",
        }
        container = av.open(str(self.path), "w", format="webm", options=options)
        out = []
        for spec in self.streams:
            if spec.kind == "video":
                stream = container.add_stream("libvpx", rate=30)
                stream.width, stream.height = spec.width or 640, spec.height or 360
            else:
                stream = container.add_stream("libopus", rate=spec.sample_rate)
                stream.codec_context.extradata = opus_head(spec.channels, spec.sample_rate)
            stream.time_base = MS
            out.append(stream)
        return container, out

    def _run(self) -> None:
        import av

        container = None
        streams: list = []
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                stream, data, pts_ms, keyframe = item
                if container is None:
                    container, streams = self._open()
                packet = av.Packet(data)
                packet.stream = streams[stream]
                packet.time_base = MS
                packet.pts = packet.dts = pts_ms
                packet.is_keyframe = keyframe
                container.mux(packet)
                self.frames_written[stream] += 1
                self.last_pts_ms[stream] = pts_ms
        except Exception as exc:  # disk full, I/O error, a muxer refusal: stop, keep the node
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("recording %s: write failed, recording stops: %s", self.path, self.error)
            if self.on_error is not None:
                try:
                    self.on_error(self.error)
                except Exception:
                    logger.exception("recording %s: error callback failed", self.path)
        finally:
            if container is not None:
                try:
                    container.close()
                except Exception as exc:
                    logger.warning("recording %s: could not finish the file: %s", self.path, exc)
            # whatever is still queued (after an error) is dropped
            while not self._queue.empty():
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
