"""Histograms and counters observed from events, not from packets.

* Join phases: read from the node's JoinLog at each scrape; every phase of every recent join is
  observed once, when it has happened (sfu/rooms/timeline.py marks them).
* Agent turns and captions: from the data messages the room relays (Room.data_relayed). The
  agent's final "transcript" line carries `timings_ms` (endpointing, stt, answer,
  tts_first_audio, reply); an "interruption" message says barge-in or noise; a final caption
  on "captions/<lang>" carries its speech `end` (unix time), so the delay is now - end. Only
  messages from agent or captioner participants count, and only plausible numbers.
* Agent jobs ending (sfu/agents/dispatcher.py job listeners) and the event loop's lag (a timer
  task).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from ..agents import is_agent_participant
from ..rooms.timeline import PHASES, JoinLog, JoinTimeline
from .histogram import Histogram

if TYPE_CHECKING:
    from ..agents import AgentJob
    from ..room import Room
    from ..rooms.participant import Participant

JOIN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
AGENT_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0)
CAPTION_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
MAX_STAGE_S = 600.0  # anything longer is not a measurement
AGENT_STAGES = ("stt", "answer", "tts_first_audio")
INTERRUPTION_KINDS = ("barge_in", "ignored_noise")
JOB_END_STATES = ("ended", "failed")


def _seconds(value: Any) -> float | None:
    """Milliseconds from a message as seconds, or None when not a plausible duration."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    seconds = value / 1000
    return seconds if 0 <= seconds <= MAX_STAGE_S else None


class EventMetrics:
    def __init__(self) -> None:
        self.join_phases = {phase: Histogram(JOIN_BUCKETS) for phase in PHASES}
        self._joins_seen: dict[int, tuple[JoinTimeline, set[str]]] = {}
        self.agent_turns = 0
        self.voice_to_voice = Histogram(AGENT_BUCKETS)
        self.agent_stages = {stage: Histogram(AGENT_BUCKETS) for stage in AGENT_STAGES}
        self.interruptions = dict.fromkeys(INTERRUPTION_KINDS, 0)
        self.captions = 0
        self.caption_delay = Histogram(CAPTION_BUCKETS)
        self.jobs_ended = dict.fromkeys(JOB_END_STATES, 0)
        self.loop_lag = Histogram(LAG_BUCKETS)

    # -- joins (at scrape time) --------------------------------------------------------------

    def observe_joins(self, log: JoinLog) -> None:
        seen: dict[int, tuple[JoinTimeline, set[str]]] = {}
        for timeline in log.recent:
            entry = self._joins_seen.get(id(timeline))
            if entry is None or entry[0] is not timeline:
                entry = (timeline, set())
            seen[id(timeline)] = entry
            for phase, ms in timeline.ms().items():
                histogram = self.join_phases.get(phase)
                if histogram is not None and phase not in entry[1]:
                    entry[1].add(phase)
                    histogram.observe(ms / 1000)
        self._joins_seen = seen  # joins that left the log are forgotten

    # -- data messages -----------------------------------------------------------------------

    def on_data(self, room: Room, sender: Participant, topic: str, payload: Any) -> None:
        if not isinstance(payload, dict) or not is_agent_participant(
            sender.identity, sender.metadata
        ):
            return
        if topic == "transcript":
            if payload.get("speaker") == "agent" and payload.get("final") is True:
                self._agent_turn(payload.get("timings_ms"))
        elif topic == "interruption":
            kind = payload.get("kind")
            if isinstance(kind, str) and kind in self.interruptions:
                self.interruptions[kind] += 1
        elif topic.startswith("captions/") and payload.get("final") is True:
            end = payload.get("end")
            if isinstance(end, int | float) and not isinstance(end, bool) and math.isfinite(end):
                delay = time.time() - end
                if 0 <= delay <= MAX_STAGE_S:
                    self.captions += 1
                    self.caption_delay.observe(delay)

    def _agent_turn(self, timings: Any) -> None:
        if not isinstance(timings, dict):
            return
        self.agent_turns += 1
        for stage, histogram in self.agent_stages.items():
            value = _seconds(timings.get(stage))
            if value is not None:
                histogram.observe(value)
        # end of the buyer's speech -> the agent's first audio: endpointing + reply
        endpointing, reply = _seconds(timings.get("endpointing")), _seconds(timings.get("reply"))
        if endpointing is not None and reply is not None:
            self.voice_to_voice.observe(endpointing + reply)

    # -- agent jobs --------------------------------------------------------------------------

    def on_job_event(self, event: str, job: AgentJob) -> None:
        if event == "agent_job_ended" and job.state in self.jobs_ended:
            self.jobs_ended[job.state] += 1
