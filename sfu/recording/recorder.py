"""One recorded show (Recording) and the node's recordings (Recorder).

A recording takes the tracks one participant (the host) publishes: one video (VP8) and one
audio (Opus) track, camera and microphone first. It attaches a tap to each Producer, asks for
a keyframe, and starts the file on the first keyframe: that frame is time zero, audio before
it is left out. It ends on `stop()`, when the host's tracks are unpublished, after
`max_duration_s`, or on a write error (disk full: the recording fails, the node goes on).

Files, in `[recording] dir`/<room>/: `<room>-<UTC start>-<id>.webm` (the media), `.json`
beside it (what the listing and the replay page read; written at start, so even a file cut
by a crash is listed), and `.<lang>.vtt` per caption language, written at the end from the
room's caption archive (cue times from the file's time zero).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .tap import AudioTap, RecordingTap, VideoTap
from .writer import MkvWriter, StreamSpec

if TYPE_CHECKING:
    from ..config import RecordingSettings
    from ..media.producer import Producer
    from ..room import Room

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
KEYFRAME_WAIT_S = 10.0  # no keyframe by then: the recording fails (nothing to write)
LATE_CAPTIONS_S = 15.0  # captions are written again this long after the end (a caption's
# final text reaches the archive a few seconds after it was spoken)
SIDECAR_EVERY_S = 2.0  # the .json is rewritten this often while recording (after a crash it
# still tells roughly how long the file is)


class RecordingError(Exception):
    """A request the recorder cannot do: `status` is the HTTP status to answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def safe_name(name: str) -> str:
    """A room name as a directory/file name (letters, digits, _ . - only)."""
    return _UNSAFE.sub("_", name)[:64] or "_"


def vp8_keyframe_size(frame: bytes) -> tuple[int, int]:
    """Width and height from a VP8 keyframe header (RFC 6386 9.1); (0, 0) if not one."""
    if len(frame) >= 10 and frame[3:6] == b"\x9d\x01\x2a":
        return (frame[6] | frame[7] << 8) & 0x3FFF, (frame[8] | frame[9] << 8) & 0x3FFF
    return 0, 0


@dataclass
class Track:
    tap: RecordingTap
    kind: str
    track_id: str
    codec: str


class Recording:
    """One show being written: taps on the host's producers -> one MkvWriter."""

    def __init__(
        self,
        room: Room,
        identity: str,
        producers: list[Producer],
        settings: RecordingSettings,
        recorder: Recorder,
    ) -> None:
        self.id = "RC_" + secrets.token_hex(6)
        self.room = room.name
        self.room_sid = room.sid
        self.identity = identity
        self.settings = settings
        self.recorder = recorder
        self.created_at = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.created_at))
        self.directory = Path(settings.dir) / safe_name(room.name)
        self.base = f"{safe_name(room.name)}-{stamp}-{self.id[3:]}"
        self.state = "starting"  # -> recording -> stopped | failed
        self.end_reason = ""
        self.error: str | None = None
        self.t0 = 0.0  # monotonic arrival of the first keyframe: time zero of the file
        self.t0_wall = 0.0
        self.ended_at = 0.0
        self.captions: list[str] = []
        self.writer: MkvWriter | None = None
        self._loop = asyncio.get_running_loop()
        self._stopping: asyncio.Task | None = None  # stop_soon()'s task
        self._refresher: asyncio.Task | None = None
        self._stop_begun = False
        self._stopped = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self.tracks: list[Track] = []
        video = next((p for p in producers if p.kind == "video"), None)
        audio = next((p for p in producers if p.kind == "audio"), None)
        for producer in (video, audio):
            if producer is None:
                continue
            index = len(self.tracks)
            tap = (
                VideoTap(producer, self, index)
                if producer.kind == "video"
                else AudioTap(producer, self, index)
            )
            codec = producer.codec.mime_type.split("/")[1].lower()
            self.tracks.append(Track(tap, producer.kind, producer.id, codec))
            producer.on_close(self._producer_closed)

    @property
    def path(self) -> Path:
        return self.directory / f"{self.base}.webm"

    @property
    def has_video(self) -> bool:
        return any(t.kind == "video" for t in self.tracks)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_sidecar()
        for track in self.tracks:
            track.tap.attach()
        for track in self.tracks:
            if isinstance(track.tap, VideoTap):
                track.tap.start()
        if not self.has_video:
            self._open(0, 0, time.monotonic())
        else:
            self._timer = self._loop.call_later(KEYFRAME_WAIT_S, self._no_keyframe)
        logger.info(
            "recording %s of %s (%s) started: %s", self.id, self.room, self.identity, self.path
        )

    def _no_keyframe(self) -> None:
        if self.state == "starting":
            self.fail("no keyframe from the publisher")

    def _open(self, width: int, height: int, t0: float) -> None:
        specs = [
            StreamSpec("video", "vp8", width=width, height=height)
            if t.kind == "video"
            else StreamSpec("audio", "opus")
            for t in self.tracks
        ]
        self.writer = MkvWriter(
            self.path,
            specs,
            cluster_ms=self.settings.cluster_ms,
            on_error=self._write_failed,
        )
        self.t0 = t0
        self.t0_wall = time.time() - (time.monotonic() - t0)
        self.state = "recording"
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(
            self.settings.max_duration_s, self.stop_soon, "max_duration"
        )
        self._write_sidecar()
        self._refresher = asyncio.ensure_future(self._refresh_sidecar())

    async def _refresh_sidecar(self) -> None:
        while self.state == "recording":
            await asyncio.sleep(SIDECAR_EVERY_S)
            if self.state != "recording":
                break
            try:
                await asyncio.to_thread(self._write_sidecar)
            except OSError as exc:  # the disk is full: the writer will say so
                logger.warning("recording %s: sidecar not updated: %s", self.id, exc)

    def on_frame(
        self, tap: RecordingTap, rtp_ts: int, arrival_s: float, data: bytes, keyframe: bool
    ) -> None:
        """A whole frame from a tap (event loop; must stay cheap)."""
        writer = self.writer
        if writer is None:
            if self.state != "starting" or not (keyframe and isinstance(tap, VideoTap)):
                return  # the file starts on a video keyframe
            width, height = vp8_keyframe_size(data)
            self._open(width, height, arrival_s)
            writer = self.writer
            assert writer is not None
        elif self.state != "recording" or arrival_s < self.t0:
            return
        pts = tap.timeline.pts_ms(rtp_ts, (arrival_s - self.t0) * 1000.0)
        if not writer.put(tap.stream, data, pts, keyframe) and writer.error is None:
            # the writer is behind (slow disk): video must restart on a keyframe
            if isinstance(tap, VideoTap):
                tap.assembler.broken = True
                tap.producer.want_keyframe(arrival_s, max(tap.current, 0))

    def _producer_closed(self, producer: Producer) -> None:
        if self.state in ("starting", "recording"):
            self.stop_soon("publisher_left")

    def _write_failed(self, error: str) -> None:
        """From the writer thread."""
        self._loop.call_soon_threadsafe(self.fail, error)

    def fail(self, error: str) -> None:
        if self.state in ("starting", "recording"):
            self.error = error
            self.stop_soon("error")

    def stop_soon(self, reason: str) -> None:
        if self._stopping is None and not self._stop_begun:
            self._stopping = asyncio.ensure_future(self.stop(reason))

    async def stop(self, reason: str = "stopped") -> None:
        """Detach, finish the file (in a thread), write the captions; idempotent."""
        if self._stop_begun:
            await self._stopped.wait()
            return
        self._stop_begun = True
        self.end_reason = reason
        if self._timer is not None:
            self._timer.cancel()
        if self._refresher is not None:
            self._refresher.cancel()
        for track in self.tracks:
            track.tap.close()
        self.ended_at = time.time()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
            if self.writer.error and not self.error:
                self.error = self.writer.error
        if self.writer is None and not self.error:
            self.error = "stopped before the first keyframe: nothing recorded"
        self.state = "failed" if self.error else "stopped"
        if self.writer is not None and self.error is None:
            try:
                self.captions = await self.recorder.write_captions(self)
            except Exception:
                logger.exception("recording %s: captions not written", self.id)
        try:
            await asyncio.to_thread(self._write_sidecar)
        except OSError as exc:
            logger.error("recording %s: sidecar not written: %s", self.id, exc)
        log = logger.error if self.state == "failed" else logger.info
        log(
            "recording %s of %s ended (%s): %s%s",
            self.id,
            self.room,
            reason,
            self.path,
            f", error: {self.error}" if self.error else "",
        )
        self._stopped.set()
        self.recorder.ended(self)

    # -- what it tells -----------------------------------------------------------------------------

    @property
    def duration_s(self) -> float:
        if self.writer is None:
            return 0.0
        return round(max(0, max(self.writer.last_pts_ms)) / 1000.0, 3)

    def to_json(self) -> dict[str, Any]:
        writer = self.writer
        return {
            "id": self.id,
            "room": self.room,
            "room_sid": self.room_sid,
            "identity": self.identity,
            "state": self.state,
            "reason": self.end_reason,
            "error": self.error,
            "file": f"{self.base}.webm",
            "created_at": round(self.created_at, 3),
            "started_at": round(self.t0_wall, 3) if self.t0_wall else None,
            "ended_at": round(self.ended_at, 3) if self.ended_at else None,
            "duration_s": self.duration_s,
            "tracks": [
                {
                    "kind": t.kind,
                    "codec": t.codec,
                    "track_id": t.track_id,
                    "frames": writer.frames_written[i] if writer else 0,
                    **(
                        {"layer_switches": t.tap.switches, "layer": t.tap.current}
                        if isinstance(t.tap, VideoTap)
                        else {}
                    ),
                }
                for i, t in enumerate(self.tracks)
            ],
            "dropped_frames": writer.dropped if writer else 0,
            "captions": self.captions,
        }

    def _write_sidecar(self) -> None:
        path = self.directory / f"{self.base}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        tmp.replace(path)


class Recorder:
    """The node's recordings: at most one running per room, `max_active` in all."""

    def __init__(self, settings: RecordingSettings, events=None, captions=None) -> None:
        self.settings = settings
        self.active: dict[str, Recording] = {}
        # events(event_name, recording): webhooks; captions(room, t_from, t_to) -> entries
        self.events = events
        self.captions = captions
        self.late_captions_s = LATE_CAPTIONS_S
        self._late: set[asyncio.Task] = set()

    def _emit(self, event: str, recording: Recording) -> None:
        if self.events is not None:
            try:
                self.events(event, recording)
            except Exception:
                logger.exception("recording event %s failed", event)

    def start(self, room: Room, identity: str | None = None) -> Recording:
        if room.name in self.active:
            raise RecordingError(409, "conflict", f"room {room.name!r} is already being recorded")
        if len(self.active) >= self.settings.max_active:
            raise RecordingError(503, "busy", "this node records its maximum number of shows")
        producers = [p for p in room.live_producers() if identity in (None, p.info.publisher)]
        video = [p for p in producers if p.kind == "video" and p.is_vp8]
        if identity is None:
            # the host: whoever publishes VP8 video (the camera first), else audio
            ranked = sorted(video, key=lambda p: p.info.source != "camera") or [
                p for p in producers if p.kind == "audio"
            ]
            if not ranked:
                raise RecordingError(409, "nothing_to_record", "nobody publishes in this room")
            identity = ranked[0].info.publisher
            producers = [p for p in producers if p.info.publisher == identity]
        producers = sorted(producers, key=lambda p: p.info.source not in ("camera", "microphone"))
        usable = [
            p
            for p in producers
            if (p.kind == "video" and p.is_vp8)
            or (p.kind == "audio" and p.codec.mime_type.lower() == "audio/opus")
        ]
        if not usable:
            raise RecordingError(
                409, "nothing_to_record", f"{identity!r} publishes no VP8 video or Opus audio"
            )
        directory = Path(self.settings.dir)
        directory.mkdir(parents=True, exist_ok=True)
        free_mb = shutil.disk_usage(directory).free / 1e6
        if free_mb < self.settings.min_free_mb:
            raise RecordingError(
                507, "insufficient_storage", f"{free_mb:.0f} MB free in {directory}"
            )
        recording = Recording(room, identity, usable, self.settings, self)
        self.active[room.name] = recording
        try:
            recording.start()
        except OSError as exc:
            del self.active[room.name]
            for track in recording.tracks:
                track.tap.close()
            raise RecordingError(507, "storage_error", str(exc)) from None
        self._emit("recording_started", recording)
        return recording

    async def stop(self, room: str) -> Recording:
        recording = self.active.get(room)
        if recording is None:
            raise RecordingError(409, "not_recording", f"room {room!r} is not being recorded")
        await recording.stop("stopped")
        return recording

    def ended(self, recording: Recording) -> None:
        if self.active.get(recording.room) is recording:
            del self.active[recording.room]
        self._emit("recording_ended", recording)
        if recording.state == "stopped" and self.captions is not None:
            task = asyncio.ensure_future(self._late_captions(recording))
            self._late.add(task)
            task.add_done_callback(self._late.discard)

    async def _late_captions(self, recording: Recording) -> None:
        """Write the captions again once the last finals have reached the archive."""
        await asyncio.sleep(self.late_captions_s)
        try:
            langs = await self.write_captions(recording)
            if langs != recording.captions:
                recording.captions = langs
                await asyncio.to_thread(recording._write_sidecar)
        except Exception:
            logger.exception("recording %s: late captions not written", recording.id)

    async def write_captions(self, recording: Recording) -> list[str]:
        """WebVTT per language of the captions spoken during the recording."""
        if self.captions is None:
            return []
        start, end = recording.t0_wall, recording.ended_at
        entries = await self.captions(recording.room, start, end)
        if not entries:
            return []
        from ..captions.vtt import to_vtt

        langs = sorted(
            {e["lang"] for e in entries} | {k for e in entries for k in e["translations"]}
        )

        def write() -> list[str]:
            for lang in langs:
                text = to_vtt(entries, start, lang, f"{recording.room}, {lang}")
                (recording.directory / f"{recording.base}.{lang}.vtt").write_text(text, "utf-8")
            return langs

        return await asyncio.to_thread(write)

    def listing(self, room: str) -> list[dict[str, Any]]:
        """Sidecars of the room's recordings, newest first (blocking: call in a thread)."""
        directory = Path(self.settings.dir) / safe_name(room)
        out = []
        for path in sorted(directory.glob("*.json"), reverse=True)[:200]:
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if info.get("room") != room:
                continue
            active = self.active.get(room)
            if active is not None and active.id == info.get("id"):
                info = active.to_json()
            elif info.get("state") in ("starting", "recording"):
                info["state"] = "interrupted"  # the node stopped while it was running
            out.append(info)
        return out

    async def close(self) -> None:
        for recording in list(self.active.values()):
            await recording.stop("node_shutdown")
        for task in list(self._late):
            task.cancel()
