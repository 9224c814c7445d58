"""One captions job: join a room as the captioner and caption its hosts until told to stop.

The agent worker runs it for a job of kind "captions" (agent/worker.py):

    from .captions.job import create_captions_job, prepare_captions
    register_kind("captions", create_captions_job, prepare_captions)

or directly:

    from agent.captions.job import run_captions_job
    reason = await run_captions_job(url, token, room, agent_config)

`token` is the job's access token for `room` with the `subscribe` grant (to receive the host's
audio). Finals are posted to the caption archive with a token holding the `agent` grant: the
job token if it has it, else `archive_token` (the worker passes its own). The job ends when the
task is cancelled, when `stop` is set, when the SFU closes the connection, or when no host has
been in the room for `captions.idle_exit_s`. The models are loaded once per process and shared
by every job in it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..audio.stt import WhisperStt, resolve_model_dir
from ..config import AgentConfig
from ..translate import translator_from_settings
from .archive_client import ArchivePoster
from .captioner import Captioner
from .config import CaptionSettings, caption_settings
from .vocabulary import build_prompts

logger = logging.getLogger(__name__)

CAPTIONER_METADATA = {"role": "captioner"}


@dataclass
class CaptionModels:
    stt: WhisperStt
    translator: Any


_models: dict[tuple, CaptionModels] = {}
_models_lock = threading.Lock()


def load_models(config: AgentConfig | None = None) -> CaptionModels:
    """Whisper and the translator for `config`, loaded once per process (blocking: ~0.5 s)."""
    config = config or AgentConfig()
    s, t = config.stt, config.translate
    key = (
        s.model_dir,
        str(config.cache_dir),
        s.compute_type,
        s.threads,
        s.beam_size,
        tuple(s.languages),
        t.backend,
        t.model_dir,
        t.source,
        t.target,
        tuple(sorted(t.models.items())),
    )
    with _models_lock:
        if key not in _models:
            stt = WhisperStt(
                resolve_model_dir(s.model_dir, config.cache_dir),
                compute_type=s.compute_type,
                threads=s.threads,
                beam_size=s.beam_size,
                languages=tuple(s.languages),
                language_confidence=s.language_confidence,
            )
            translator = translator_from_settings(t)
            _warm_up(stt, translator)
            _models[key] = CaptionModels(stt, translator)
        return _models[key]


def _warm_up(stt: WhisperStt, translator: Any) -> None:
    """The first call of each model is slow (allocations, lazy loading): pay it before the show."""
    import numpy as np

    language = stt.languages[0] if stt.languages else None
    stt.transcribe(np.zeros(16000, np.int16), language=language)
    stt.transcribe(np.zeros(16000, np.int16), language=language, beam_size=5)  # finals' beam
    for source, target in (("en", "pt"), ("pt", "en")):
        if translator.supports(source, target):
            translator.translate("Hello.", source, target)


def new_session_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


async def run_captions_job(
    url: str,
    token: str,
    room: str,
    config: AgentConfig | CaptionSettings | dict | None = None,
    *,
    stop: asyncio.Event | None = None,
    network=None,
    models: CaptionModels | None = None,
    session: str | None = None,
    stats: dict | None = None,
    archive_token: str | None = None,
    on_started: Callable[[], Any] | None = None,
) -> str:
    """Caption `room` on the SFU at `url` (http base) until cancelled, stopped or idle; returns
    why it ended.

    `config`: the worker's AgentConfig (its `captions` table when it has one, its stt and
    translate settings), or just CaptionSettings. `network`: client ICE settings (tests pass
    loopback). `archive_token`: posts finals to the archive (needs the `agent` or `admin`
    grant; default `token`, e.g. the worker's own token when job tokens lack the grant).
    `on_started`: called once joined. `stats`: filled on exit with counters (tracks, partials,
    finals, translations).
    """
    agent_config = config if isinstance(config, AgentConfig) else AgentConfig()
    settings = caption_settings(config)
    loop = asyncio.get_running_loop()
    if models is None:
        models = await loop.run_in_executor(None, load_models, agent_config)
    from sfu.client import RoomClient
    from sfu.client.room_client import ANY_INTERFACE

    client = await RoomClient.connect(
        url,
        token,
        name="Captions",
        metadata=dict(CAPTIONER_METADATA),
        auto_subscribe=False,
        network=network or ANY_INTERFACE,
    )
    if client.room != room:
        logger.warning("captions: the token is for room %r, not %r", client.room, room)
    archive = None
    if settings.archive:
        archive = ArchivePoster(
            url, client.room, archive_token or token, session or new_session_id(), time.time()
        )
        archive.start()
    prompts = build_prompts(settings, agent_config.shop.dir, getattr(models.stt, "languages", ()))
    stt_executor = ThreadPoolExecutor(1, thread_name_prefix="captions-stt")
    translate_executor = ThreadPoolExecutor(1, thread_name_prefix="captions-translate")
    captioner = Captioner(
        client,
        models.stt,
        models.translator,
        settings,
        stt_executor=stt_executor,
        translate_executor=translate_executor,
        archive=archive,
        prompts=prompts,
    )
    captioner.start()
    logger.info("captions: %s joined %s", client.identity, client.room)
    try:
        if on_started is not None:
            on_started()
        return await _until_done(client, captioner, settings, stop)
    finally:
        await captioner.close()
        try:
            await client.leave()  # before the archive flush: the room sees us go at once
        except Exception:
            await client.close()
        if archive is not None:
            await archive.close()
        stt_executor.shutdown(wait=False, cancel_futures=True)
        translate_executor.shutdown(wait=False, cancel_futures=True)
        if stats is not None:
            stats.update(captioner.stats.to_dict())
            stats["archived"] = archive.posted if archive is not None else 0
            stats["identity"] = client.identity
        logger.info("captions: left %s (%s)", client.room, captioner.stats.to_dict())


async def _until_done(client, captioner: Captioner, settings: CaptionSettings, stop) -> str:
    closed = asyncio.ensure_future(client.wait_closed())  # the SFU closed the socket
    try:
        return await _watch(closed, captioner, settings, stop)
    finally:
        closed.cancel()


async def _watch(closed: asyncio.Future, captioner: Captioner, settings, stop) -> str:
    while True:
        if stop is not None and stop.is_set():
            return "stopped"
        if closed.done():
            logger.info("captions: the SFU closed the connection")
            return "signalling socket closed"
        if settings.idle_exit_s and captioner.idle_for() > settings.idle_exit_s:
            logger.info("captions: no host for %.0f s; leaving", settings.idle_exit_s)
            return f"no host for {settings.idle_exit_s:g} s"
        if stop is not None:
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
        else:
            await asyncio.sleep(0.5)


# -- the agent worker's job kind "captions" (agent/worker.py: register_kind) ----------------------


def prepare_captions(worker) -> None:
    """Load the models before the worker offers itself (runs in a thread)."""
    if "captions_models" not in worker.resources:
        worker.resources["captions_models"] = load_models(worker.config)


class CaptionsJobRunner:
    """A worker's JobRunner for one captions job: `run()` returns why it ended."""

    def __init__(self, job, worker) -> None:
        self.job = job
        self.worker = worker
        self._stop = asyncio.Event()
        self.reason = ""

    async def run(self) -> str:
        worker, job = self.worker, self.job
        reason = await run_captions_job(
            worker.url,
            job.token,
            job.room,
            worker.config,
            stop=self._stop,
            network=worker.network,
            models=worker.resources.get("captions_models"),
            session=f"job-{job.job_id}",
            archive_token=worker.token(),
            on_started=lambda: worker.report({"type": "job_started", "job_id": job.job_id}),
        )
        return self.reason or reason

    def stop(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
        self._stop.set()


def create_captions_job(job, worker) -> CaptionsJobRunner:
    return CaptionsJobRunner(job, worker)
