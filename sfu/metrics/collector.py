"""The node's Prometheus collector: everything is read when Prometheus scrapes.

Gauges come from the live objects (rooms, participants, producers, downtracks, bandwidth
controllers, agent jobs); counters from `Totals` (per-object counters made monotonic);
histograms from `EventMetrics`. Every family carries the `node_id` and `region` labels; the
other labels are small fixed sets (kind, type, phase, state), never a participant or a room.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .histogram import Histogram
from .observers import EventMetrics
from .totals import Reading, Totals

if TYPE_CHECKING:
    from ..agents import AgentDispatcher
    from ..media.forwarder import DownTrack
    from ..media.producer import Producer
    from ..node import SfuNode
    from ..rooms.participant import Participant
    from ..webhooks.sender import WebhookNotifier

LOSS_BUCKETS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
RTT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)
# bandwidth estimates in bytes per second (100 kbit/s .. 10 Mbit/s)
BWE_BUCKETS = tuple(kbps * 125 for kbps in (100, 200, 300, 500, 750, 1000, 1500, 2500, 4000, 10000))
KINDS = ("audio", "video")
PARTICIPANT_KINDS = ("websocket", "whip", "whep")
LABEL_VALUES = {"kind": KINDS, "type": ("media", "retransmission", "probe")}

# Counters read from producers and downtracks: name -> (help, label names after node/region)
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "packets_received": ("RTP packets received from publishers", ("kind",)),
    "bytes_received": ("RTP bytes received from publishers (whole packets)", ("kind",)),
    "publisher_packets_lost": ("packets lost on publishers' uplinks (RFC 3550)", ("kind",)),
    "publisher_nack_packets": ("packets the node asked publishers to resend (NACK)", ()),
    "publisher_keyframe_requests": ("keyframe requests (PLI) sent to publishers", ()),
    "packets_sent": ("RTP packets sent to subscribers, by type", ("kind", "type")),
    "bytes_sent": ("RTP payload bytes sent to subscribers, by type", ("kind", "type")),
    "subscriber_packets_lost": ("packets subscribers reported lost (RTCP RR)", ("kind",)),
    "subscriber_nacks": ("RTCP NACK packets received from subscribers", ()),
    "subscriber_keyframe_requests": ("keyframe requests (PLI/FIR) from subscribers", ()),
    "retransmissions_skipped": ("NACKed packets not resent (retransmission budget)", ()),
    "keyframes_from_cache": ("subscribers started on the cached keyframe", ()),
    "layer_switches": ("simulcast layer switches toward subscribers", ()),
}


def producer_readings(producer: Producer) -> Iterator[Reading]:
    kind = (producer.kind,)
    yield ("packets_received", kind, producer, "packets", producer.packets)
    for enc in producer.layers:
        stats = enc.stats
        if stats is not None:  # replaced when the SSRC changes: a new object, a new count
            yield ("bytes_received", kind, stats, "bytes", stats.bytes_received)
            yield ("publisher_packets_lost", kind, stats, "lost", stats.packets_lost)
        if enc.nack is not None:
            yield ("publisher_nack_packets", (), enc.nack, "nacks", enc.nack.nacks_sent)
        yield ("publisher_keyframe_requests", (), enc, "plis", enc.keyframe_requests)


def downtrack_readings(dt: DownTrack) -> Iterator[Reading]:
    k = dt.kind
    yield ("packets_sent", (k, "media"), dt, "packets", dt.packets_sent)
    yield ("packets_sent", (k, "retransmission"), dt, "rtx", dt.retransmitted)
    yield ("packets_sent", (k, "probe"), dt, "probes", dt.probe_packets)
    yield ("bytes_sent", (k, "media"), dt, "octets", dt.octets_sent)
    yield ("bytes_sent", (k, "retransmission"), dt, "rtx_octets", dt.retransmitted_octets)
    yield ("bytes_sent", (k, "probe"), dt, "probe_octets", dt.probe_octets)
    yield ("subscriber_packets_lost", (k,), dt, "lost", dt.packets_lost)
    yield ("subscriber_nacks", (), dt, "nacks", dt.nacks_received)
    yield ("subscriber_keyframe_requests", (), dt, "plis", dt.keyframe_requests_received)
    yield ("retransmissions_skipped", (), dt, "skipped", dt.retransmissions_skipped)
    yield ("keyframes_from_cache", (), dt, "cached", dt.keyframes_from_cache)
    yield ("layer_switches", (), dt, "switches", dt.layer_switches)


def participant_readings(participant: Participant) -> Iterator[Reading]:
    if participant.subscriber is not None:
        for dt in participant.subscriber.downtracks:
            yield from downtrack_readings(dt)


class _GaugeDistribution:
    """Current values across subscribers, as a Prometheus gauge histogram."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.values = Histogram(bounds)

    def family(self, name: str, doc: str, labels: list[str], values: list[str]) -> Metric:
        family = GaugeHistogramMetricFamily(name, doc, labels=labels)
        family.add_metric(values, self.values.cumulative(), gsum_value=self.values.sum)
        return family


class SfuCollector(Collector):
    def __init__(
        self,
        node: SfuNode,
        totals: Totals,
        events: EventMetrics,
        *,
        dispatcher: AgentDispatcher | None = None,
        webhooks: WebhookNotifier | None = None,
    ) -> None:
        self.node = node
        self.totals = totals
        self.events = events
        self.dispatcher = dispatcher
        self.webhooks = webhooks
        self.base = [node.node_id, node.config.server.region]
        # every series exists from the start (at 0), so rate() works from the first scrape
        for name, (_doc, extra) in COUNTERS.items():
            combos: list[tuple[str, ...]] = [()]
            for label in extra:
                combos = [(*c, v) for c in combos for v in LABEL_VALUES[label]]
            for labels in combos:
                totals.values[(name, labels)] += 0.0

    def describe(self) -> list[Metric]:
        return []  # families depend on the configuration; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        node, base = self.node, self.base
        names = ["node_id", "region"]
        rooms = list(node.rooms.rooms.values())
        participants = [p for room in rooms for p in room.participants.values()]
        producers = [p for room in rooms for p in room.producers.values() if not p.closed]

        # counters from the media objects (read first: the gauges below see the same moment)
        def readings() -> Iterator[Reading]:
            for producer in producers:
                yield from producer_readings(producer)
            for participant in participants:
                yield from participant_readings(participant)

        self.totals.scrape(readings())
        self.events.observe_joins(node.joins)

        info = GaugeMetricFamily("sfu_node_info", "this node", labels=[*names, "version"])
        from .. import __version__

        info.add_metric([*base, __version__], 1)
        yield info
        yield _gauge(
            "sfu_start_time_seconds", "unix time the node started", names, base, node.started_at
        )

        yield _gauge("sfu_rooms", "rooms with participants", names, base, len(rooms))
        by_kind = dict.fromkeys(PARTICIPANT_KINDS, 0)
        for p in participants:
            by_kind[p.kind.value] = by_kind.get(p.kind.value, 0) + 1
        family = GaugeMetricFamily(
            "sfu_participants", "participants by connection kind", labels=[*names, "kind"]
        )
        for kind, n in by_kind.items():
            family.add_metric([*base, kind], n)
        yield family
        yield _gauge(
            "sfu_websockets", "open WebSocket connections", names, base, len(node.websockets)
        )

        published = dict.fromkeys(KINDS, 0)
        for producer in producers:
            published[producer.kind] = published.get(producer.kind, 0) + 1
        yield _by_kind("sfu_published_tracks", "tracks published", names, base, published)

        subscribed = dict.fromkeys(KINDS, 0)
        loss, rtt, bwe = (
            _GaugeDistribution(LOSS_BUCKETS),
            _GaugeDistribution(RTT_BUCKETS),
            _GaugeDistribution(BWE_BUCKETS),
        )
        for p in participants:
            sub = p.subscriber
            if sub is None or sub.closed:
                continue
            for dt in sub.downtracks:
                fw = dt.forwarder
                if fw is None or fw.closed:
                    continue
                subscribed[dt.kind] = subscribed.get(dt.kind, 0) + 1
                if dt.rtt_s is not None:
                    rtt.values.observe(dt.rtt_s)
                    loss.values.observe(dt.fraction_lost / 256)
            estimate = sub.bandwidth.estimate_bps
            if estimate is not None:
                bwe.values.observe(estimate / 8)
        yield _by_kind(
            "sfu_subscribed_tracks", "tracks forwarded to subscribers", names, base, subscribed
        )
        yield loss.family(
            "sfu_subscriber_loss_ratio",
            "each subscribed track's latest loss fraction (RTCP RR)",
            names,
            base,
        )
        yield rtt.family(
            "sfu_subscriber_rtt_seconds", "each subscribed track's round-trip time", names, base
        )
        yield bwe.family(
            "sfu_bandwidth_estimate_bytes_per_second",
            "each subscriber's send-side bandwidth estimate",
            names,
            base,
        )

        for name, (doc, extra) in COUNTERS.items():
            family = CounterMetricFamily(f"sfu_{name}", doc, labels=[*names, *extra])
            for (metric, labels), value in self.totals.values.items():
                if metric == name:
                    family.add_metric([*base, *labels], value)
            yield family

        yield from self._joins(names, base)
        yield from self._agents(names, base)
        yield from self._webhooks(names, base)
        yield _histogram(
            "sfu_event_loop_lag_seconds",
            "how late the event loop runs a 0.5 s timer (a busy node forwards late)",
            names,
            base,
            self.events.loop_lag,
        )

    def _joins(self, names: list[str], base: list[str]) -> Iterator[Metric]:
        yield _counter(
            "sfu_joins", "joins (WebSocket, HTTP, WHIP, WHEP)", names, base, self.node.joins.total
        )
        family = HistogramMetricFamily(
            "sfu_join_phase_seconds",
            "time from the join request to each phase (sfu/rooms/timeline.py)",
            labels=[*names, "phase"],
        )
        for phase, histogram in self.events.join_phases.items():
            family.add_metric([*base, phase], histogram.cumulative(), sum_value=histogram.sum)
        yield family

    def _agents(self, names: list[str], base: list[str]) -> Iterator[Metric]:
        ev = self.events
        yield _counter(
            "sfu_agent_turns",
            "agent answers (final agent transcript lines)",
            names,
            base,
            ev.agent_turns,
        )
        yield _histogram(
            "sfu_agent_voice_to_voice_seconds",
            "end of the buyer's speech to the agent's first audio",
            names,
            base,
            ev.voice_to_voice,
        )
        family = HistogramMetricFamily(
            "sfu_agent_stage_seconds",
            "agent turn stages: stt, answer, tts_first_audio",
            labels=[*names, "stage"],
        )
        for stage, histogram in ev.agent_stages.items():
            family.add_metric([*base, stage], histogram.cumulative(), sum_value=histogram.sum)
        yield family
        family = CounterMetricFamily(
            "sfu_agent_interruptions", "buyer speech over the agent", labels=[*names, "kind"]
        )
        for kind, n in ev.interruptions.items():
            family.add_metric([*base, kind], n)
        yield family
        yield _counter("sfu_captions", "final captions delivered", names, base, ev.captions)
        yield _histogram(
            "sfu_caption_delay_seconds",
            "end of the spoken words to their final caption leaving the node",
            names,
            base,
            ev.caption_delay,
        )
        dispatcher = self.dispatcher
        if dispatcher is None:
            return
        states = dict.fromkeys(("pending", "assigned", "running"), 0)
        for job in dispatcher.jobs.values():
            if job.state in states:
                states[job.state] += 1
        family = GaugeMetricFamily(
            "sfu_agent_jobs", "active agent jobs by state", labels=[*names, "state"]
        )
        for state, n in states.items():
            family.add_metric([*base, state], n)
        yield family
        yield _counter(
            "sfu_agent_jobs_started",
            "agent jobs whose worker joined the room",
            names,
            base,
            dispatcher.jobs_started,
        )
        family = CounterMetricFamily(
            "sfu_agent_jobs_ended", "agent jobs that ended", labels=[*names, "state"]
        )
        for state, n in ev.jobs_ended.items():
            family.add_metric([*base, state], n)
        yield family
        workers = [w for w in dispatcher.workers.values() if w.registered and not w.gone]
        yield _gauge("sfu_agent_workers", "connected agent workers", names, base, len(workers))
        yield _gauge(
            "sfu_agent_worker_slots_free",
            "jobs the workers could still take",
            names,
            base,
            sum(max(0, w.free()) for w in workers),
        )

    def _webhooks(self, names: list[str], base: list[str]) -> Iterator[Metric]:
        hooks = self.webhooks
        if hooks is None:
            return
        stats = hooks.stats
        family = CounterMetricFamily(
            "sfu_webhook_events", "events queued for webhooks", labels=[*names, "event"]
        )
        for event, n in stats.events.items():
            family.add_metric([*base, event], n)
        yield family
        family = CounterMetricFamily(
            "sfu_webhook_deliveries",
            "event deliveries to one URL, by result",
            labels=[*names, "result"],
        )
        family.add_metric([*base, "delivered"], stats.delivered)
        family.add_metric([*base, "failed"], stats.failed)
        yield family
        yield _counter("sfu_webhook_attempts", "webhook POSTs made", names, base, stats.attempts)
        yield _counter(
            "sfu_webhook_errors",
            "webhook POSTs that failed (then retried)",
            names,
            base,
            stats.errors,
        )
        yield _counter(
            "sfu_webhook_dropped",
            "events dropped: their room's queue was full",
            names,
            base,
            stats.dropped,
        )
        yield _gauge(
            "sfu_webhook_queued", "events waiting for delivery", names, base, hooks.queued()
        )
        yield _histogram(
            "sfu_webhook_delivery_seconds",
            "event queued to answered 2xx",
            names,
            base,
            stats.delivery_seconds,
        )


def _gauge(name: str, doc: str, labels: list[str], values: list[str], value: float) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    family.add_metric(values, value)
    return family


def _counter(name: str, doc: str, labels: list[str], values: list[str], value: float) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    family.add_metric(values, value)
    return family


def _by_kind(name: str, doc: str, labels: list[str], values: list[str], counts: dict) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=[*labels, "kind"])
    for kind, n in counts.items():
        family.add_metric([*values, kind], n)
    return family


def _histogram(
    name: str, doc: str, labels: list[str], values: list[str], histogram: Histogram
) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=labels)
    family.add_metric(values, histogram.cumulative(), sum_value=histogram.sum)
    return family


def retire_participant(totals: Totals, participant: Participant) -> None:
    totals.retire(participant_readings(participant))


def retire_producer(totals: Totals, producer: Producer) -> None:
    totals.retire(producer_readings(producer))


__all__ = ["SfuCollector", "retire_participant", "retire_producer"]
