"""The captioner in a room: which tracks it transcribes, who asked for which language, and how
captions go out.

Rules (also in docs/captions.md):

* **Host tracks.** Every audio track published by a host is captioned, one transcriber per
  track. A host is a participant whose join metadata has `"role": "host"` (the demo host page and
  any SDK client can set it), or whose identity is in `captions.host_identities` (for WHIP
  encoders, which cannot set metadata). The host's language comes from its metadata
  (`"language": "pt"`), else `captions.source_language`, else Whisper detects it per phrase.
  Whisper gets the shop's vocabulary in the phrase's language as its prompt (vocabulary.py).
* **Viewers' languages.** A viewer asks with a data message to the captioner, topic
  `captions/subscribe`, payload `{"lang": "pt"}` (`{"lang": null}` stops). The browser SDK's
  `room.setCaptionLanguage()` sends it to every participant whose metadata has role
  `captioner`, again whenever a captioner joins. A viewer that leaves is forgotten.
* **Delivery.** Each caption is translated once per language asked for (and finals also into
  the archive's languages), then sent once per language as a data message on topic
  `captions/<lang>` with `to` = the viewers of that language: the SFU copies it to them alone.
  A language with no offline model gets the source text with `"untranslated": true`.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from .archive_client import ArchivePoster
from .config import CaptionSettings
from .languages import SUBSCRIBE_TOPIC, normalize, topic
from .transcriber import Caption, TrackTranscriber

logger = logging.getLogger(__name__)


@dataclass
class CaptionerStats:
    tracks: int = 0
    partials_sent: int = 0
    finals_sent: int = 0
    finals_reused: int = 0  # the speculative decode was the final: no second Whisper pass
    messages: int = 0  # data messages sent (one per caption and language)
    translations: Counter = field(default_factory=Counter)  # of finals, per target language
    partial_translations: Counter = field(default_factory=Counter)
    translate_ms: list[float] = field(default_factory=list)
    # per final: queued behind a partial, Whisper, translating and sending (ms)
    final_wait_ms: list[float] = field(default_factory=list)
    final_decode_ms: list[float] = field(default_factory=list)
    final_deliver_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def p50(values: list[float]) -> float | None:
            return round(statistics.median(values), 1) if values else None

        return {
            "final_wait_ms_p50": p50(self.final_wait_ms),
            "final_decode_ms_p50": p50(self.final_decode_ms),
            "final_deliver_ms_p50": p50(self.final_deliver_ms),
            "translate_ms_p50": p50(self.translate_ms),
            "tracks": self.tracks,
            "partials_sent": self.partials_sent,
            "finals_sent": self.finals_sent,
            "finals_reused": self.finals_reused,
            "messages": self.messages,
            "translations": dict(self.translations),
            "partial_translations": dict(self.partial_translations),
        }


class Captioner:
    def __init__(
        self,
        client,
        stt,
        translator,
        settings: CaptionSettings,
        *,
        stt_executor: Executor,
        translate_executor: Executor,
        archive: ArchivePoster | None = None,
        prompts: dict[str, str] | None = None,
    ) -> None:
        self.client = client
        self.prompts = dict(prompts or {})  # Whisper's prompt per language (vocabulary.py)
        self.stt = stt
        self.translator = translator
        self.settings = settings
        self.stt_executor = stt_executor
        self.translate_executor = translate_executor
        self.archive = archive
        self.viewers: dict[str, str] = {}  # identity -> language asked for
        self.transcribers: dict[str, TrackTranscriber] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self.stats = CaptionerStats()
        self.finals: list[dict[str, Any]] = []  # what went to the archive, newest last (bounded)
        self._host_seen = time.monotonic()

    # -- room state ------------------------------------------------------------------------------

    def start(self) -> None:
        c = self.client
        c.on("data", self._on_data)
        c.on("participant_joined", self._on_participant_joined)
        c.on("participant_left", self._on_participant_left)
        c.on("track_published", lambda m: self._maybe_caption(m["track"]))
        c.on("track_unpublished", lambda m: self._stop_track(m["track_id"]))
        for track in list(c.tracks.values()):
            self._maybe_caption(track)

    def is_host(self, identity: str) -> bool:
        if identity in self.settings.host_identities:
            return True
        participant = self.client.participants.get(identity) or {}
        metadata = participant.get("metadata") or {}
        return isinstance(metadata, dict) and metadata.get("role") == "host"

    def host_present(self) -> bool:
        return any(self.is_host(identity) for identity in self.client.participants)

    def idle_for(self) -> float:
        """Seconds since a host was last in the room."""
        if self.host_present():
            self._host_seen = time.monotonic()
        return time.monotonic() - self._host_seen

    def _host_language(self, identity: str) -> str:
        participant = self.client.participants.get(identity) or {}
        metadata = participant.get("metadata") or {}
        declared = normalize(metadata.get("language")) if isinstance(metadata, dict) else None
        return declared or normalize(self.settings.source_language) or ""

    def _on_data(self, message: dict) -> None:
        if message.get("topic") != SUBSCRIBE_TOPIC:
            return
        sender = message.get("from", "")
        payload = message.get("payload")
        lang = normalize(payload.get("lang")) if isinstance(payload, dict) else None
        if lang is None:
            self.viewers.pop(sender, None)
        else:
            self.viewers[sender] = lang
            logger.info("captions: %s asks for %s", sender, lang)

    def _on_participant_joined(self, message: dict) -> None:
        for track in message["participant"].get("tracks") or []:
            self._maybe_caption(track)

    def _on_participant_left(self, message: dict) -> None:
        identity = message.get("identity", "")
        self.viewers.pop(identity, None)
        for track_id, transcriber in list(self.transcribers.items()):
            if transcriber.speaker == identity:
                self._stop_track(track_id)

    # -- transcription ---------------------------------------------------------------------------

    def _maybe_caption(self, track: dict) -> None:
        track_id = track.get("id", "")
        if (
            track.get("kind") != "audio"
            or track_id in self.tasks
            or not self.is_host(track.get("publisher", ""))
        ):
            return
        speaker = track["publisher"]
        language = self._host_language(speaker)

        async def deliver(caption: Caption) -> None:
            await self._deliver(track_id, speaker, caption)

        transcriber = TrackTranscriber(
            self.stt, self.settings, self.stt_executor, deliver, language, speaker, self.prompts
        )
        self.transcribers[track_id] = transcriber
        self.stats.tracks += 1
        self.tasks[track_id] = asyncio.ensure_future(self._caption_track(track_id, transcriber))
        logger.info("captions: captioning %s of %s (%s)", track_id, speaker, language or "auto")

    async def _caption_track(self, track_id: str, transcriber: TrackTranscriber) -> None:
        try:
            await self.client.subscribe([track_id])
            remote = await self.client.next_track(track_id=track_id, timeout=15)
            await transcriber.run(remote.track)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("captions: track %s failed", track_id)
        finally:
            self.transcribers.pop(track_id, None)
            self.tasks.pop(track_id, None)

    def _stop_track(self, track_id: str) -> None:
        """The track is gone: its transcriber ends the open phrase when the audio stops."""
        transcriber = self.transcribers.get(track_id)
        if transcriber is not None:
            transcriber.stop()

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- delivery --------------------------------------------------------------------------------

    async def _deliver(self, track_id: str, speaker: str, caption: Caption) -> None:
        groups: dict[str, list[str]] = {}
        for identity, lang in self.viewers.items():
            if identity in self.client.participants:
                groups.setdefault(lang, []).append(identity)
        languages = set(groups)
        if caption.final and self.archive is not None:
            languages |= self._archive_languages(caption.language)
        texts: dict[str, tuple[str, bool]] = {}
        for lang in sorted(languages):
            if lang == caption.language:
                texts[lang] = (caption.text, False)
            elif self._can_translate(caption.language, lang) and (
                caption.final or self.settings.translate_partials
            ):
                texts[lang] = await self._translate(caption, lang)
            else:
                texts[lang] = (caption.text, True)
        for lang, identities in groups.items():
            text, untranslated = texts[lang]
            payload = {
                "id": f"{track_id}:{caption.seq}",
                "track": track_id,
                "speaker": speaker,
                "seq": caption.seq,
                "rev": caption.revision,
                "final": caption.final,
                "lang": lang,
                "text": text,
                "source_lang": caption.language,
                "untranslated": untranslated,
                "start": round(caption.wall_start, 3),
                "end": round(caption.wall_end, 3),
            }
            if caption.final:
                payload["source_text"] = caption.text
            try:
                await self.client.send_data(payload, topic=topic(lang), to=sorted(identities))
            except Exception as exc:  # the socket closed under us: the job is ending
                logger.info("captions: could not send (%s)", exc)
                return
            self.stats.messages += 1
        if caption.final:
            self.stats.finals_sent += 1
            self.stats.finals_reused += caption.reused
            self.stats.final_wait_ms.append(caption.wait_ms)
            self.stats.final_decode_ms.append(caption.decode_ms)
            delivered = (time.perf_counter() - caption.created) * 1e3
            self.stats.final_deliver_ms.append(delivered - caption.wait_ms - caption.decode_ms)
            for values in (
                self.stats.final_wait_ms,
                self.stats.final_decode_ms,
                self.stats.final_deliver_ms,
            ):
                del values[:-1000]
            entry = {
                "track": track_id,
                "seq": caption.seq,
                "speaker": speaker,
                "start": round(caption.wall_start, 3),
                "end": round(caption.wall_end, 3),
                "lang": caption.language,
                "text": caption.text,
                "translations": {
                    lang: text
                    for lang, (text, untranslated) in texts.items()
                    if not untranslated and lang != caption.language
                },
            }
            self.finals.append(entry)
            del self.finals[:-500]
            if self.archive is not None:
                self.archive.add(entry)
        else:
            self.stats.partials_sent += 1

    def _archive_languages(self, source: str) -> set[str]:
        wanted = self.settings.archive_languages or list(getattr(self.stt, "languages", ()))
        return {lang for lang in map(normalize, wanted) if lang and lang != source}

    def _can_translate(self, source: str, target: str) -> bool:
        try:
            return bool(self.translator.supports(source, target))
        except Exception:
            return False

    async def _translate(self, caption: Caption, target: str) -> tuple[str, bool]:
        loop = asyncio.get_running_loop()
        text, source = caption.text, caption.language
        t0 = time.perf_counter()
        try:
            out = await loop.run_in_executor(
                self.translate_executor, self.translator.translate, text, source, target
            )
        except Exception:
            logger.exception("captions: translating %s->%s failed", source, target)
            return text, True
        counter = self.stats.translations if caption.final else self.stats.partial_translations
        counter[target] += 1
        self.stats.translate_ms.append((time.perf_counter() - t0) * 1e3)
        del self.stats.translate_ms[:-1000]
        return out, False
