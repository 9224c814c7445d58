"""Figures of a weak-link run, computed from its timelines (no browser, no network, no SFU).

`benchmarks/weaklink.py` records three timelines while a lab profile plays, all on one clock
(seconds since the profile's schedule started; warm-up samples are negative):

* `sfu`: the SFU's `/api/stats` for the subscriber, polled every ~250 ms. Keys: `t`, `spatial`,
  `temporal`, `target_spatial`, `target_temporal` (the forwarded / targeted layer of the
  subscriber's video downtrack), `switches` (the downtrack's `layer_switches` counter),
  `sent_bps` (what the SFU sends on it), `estimate_bps`, `source`, `probing` (the subscriber's
  bandwidth estimate), `layers` ({spatial: bitrate_bps} of the publisher's producer);
* `subscriber`: the subscriber page's `getStats()` (inbound-rtp), polled every ~250 ms. Keys:
  `t`, `frames_decoded`, `width`, `height`, `freeze_count`, `freezes_s`
  (totalFreezesDuration), `bytes` (video bytesReceived), `rtx_bytes` (of which
  retransmissions), `lost`, `audio_lost`, `audio_received`;
* `capacity`: (t, downlink kbit/s or None) each time the lab applied a phase;
* `link`: every ~500 ms, `rx_bytes` (all that reached the viewer's side of the link, IP level)
  and `queue_drops` (the bottleneck queue's drops), for `link_mean_kbps`, `bottleneck_drops`.

Every missing value is None (the SFU's layer keys, say, before it has them); the functions below
work on whatever is there. They are pure so that tests can feed them synthetic timelines.

Definitions (see `run_figures`):

* a layer **fits** a link when its bitrate x `FIT_HEADROOM` is within the link's rate (the
  headroom covers packet overhead, audio and retransmissions; it is the layer selector's
  `up_ratio`). Layer bitrates: the medians the SFU reports for the publisher's layers, or the
  SDK's simulcast caps (`NOMINAL_LAYER_BPS`) when it reports none;
* `adapt_down_s`: from the moment the lab cut the link to the first sample on a layer that fits
  the new capacity (0 if the layer already fitted; None if it never did before the recovery);
* `adapt_up_s`: from the moment the link recovered to the first sample on the top layer (None if
  never). The top layer is the publisher's highest (f), whether or not the publisher sends it
  at the time;
* `adapt_down_decoded_s`, `adapt_up_decoded_s`: the same, seen by the viewer: the layer of the
  frames it decodes (from their width), counted only at samples where new frames were decoded;
* `freeze_pct`: WebRTC's totalFreezesDuration accumulated in the run, plus a freeze still open at
  the end (WebRTC adds a freeze only once a frame ends it), / run time x 100;
* `layer_switches`: the SFU's `layer_switches` counter over the run (spatial or temporal), or,
  if it has none, the spatial changes seen in the samples (`spatial_switches`, always reported);
* single-phase profiles: the **settled** window is the run from `settle_from_s` on;
  `settled_layer` is the layer held longest in it, `settled_share` its share of the window,
  `switches_per_min_settled` the switches in it per minute (the SFU's counter: spatial and
  temporal; the target applies to it), `spatial_switches_per_min_settled` the spatial ones only,
  `expected_layer` the highest layer that fits the link.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

# The SDK's simulcast encodings (sfu/static/sdk/sfu-client.js SIMULCAST_ENCODINGS): rid,
# spatial index, maxBitrate. Used when the SFU reports no layer bitrates.
RIDS = ("q", "h", "f")
NOMINAL_LAYER_BPS = {0: 150_000, 1: 500_000, 2: 1_500_000}
FIT_HEADROOM = 1.15
# a stretch without a new decoded frame that is still open at the end counts as a freeze when
# longer than this (WebRTC's threshold is max(3 x frame interval, frame interval + 150 ms))
OPEN_FREEZE_MIN_S = 0.5
SETTLE_FROM_S = 15.0
HELD_SHARE = 0.9

TARGETS: dict[str, dict[str, tuple[str, float]]] = {
    "drop-recover": {
        "adapt_down_s": ("<=", 2.0),
        "adapt_up_s": ("<=", 15.0),
        "freeze_pct": ("<=", 2.0),
    },
    "cross-border": {
        "settled_on_expected_layer": ("==", 1.0),
        "settled_share": (">=", HELD_SHARE),
        "freeze_pct": ("<=", 2.0),
        "switches_per_min_settled": ("<=", 2.0),
    },
}

Series = list[tuple[float, Any]]


# ---------------------------------------------------------------------- series helpers


def value_at(series: Sequence[tuple[float, Any]], t: float) -> Any:
    """The value of the last sample at or before `t` (None before the first)."""
    value = None
    for ts, v in series:
        if ts > t:
            break
        value = v
    return value


def series(samples: Iterable[dict], key: str) -> Series:
    """(t, sample[key]) for the samples that have a value for `key`, in time order."""
    return sorted((s["t"], s[key]) for s in samples if s.get(key) is not None)


def counter_delta(samples: Sequence[dict], key: str, t0: float, t1: float) -> float | None:
    """How much a counter grew between t0 and t1 (its last values at or before each)."""
    values = series(samples, key)
    if not values:
        return None
    start = value_at(values, t0)
    end = value_at(values, t1)
    if end is None:
        return None
    if start is None:  # no sample before t0: the counter's first value in the window
        start = next(v for ts, v in values if ts >= t0)
    return end - start


def counter_increase(samples: Sequence[dict], key: str, t0: float, t1: float) -> float | None:
    """Growth of a counter that may restart from 0 (a decrease counts as a restart)."""
    values = [(t, v) for t, v in series(samples, key) if t0 <= t <= t1]
    if not values:
        return None
    total = 0.0
    for (_, a), (_, b) in zip(values, values[1:], strict=False):
        total += b - a if b >= a else b
    return total


def layer_from_width(width: int | None, top_width: int, layers: int = 3) -> int | None:
    """Spatial layer of a decoded width, for simulcast layers that halve each step down."""
    if not width or not top_width:
        return None
    steps = round(math.log2(top_width / width)) if width > 0 else layers
    return max(0, min(layers - 1, layers - 1 - steps))


def layer_series(
    sfu: Sequence[dict], subscriber: Sequence[dict], top_width: int
) -> tuple[Series, str]:
    """The forwarded spatial layer over time: the SFU's own figure, else the decoded width."""
    from_sfu = series(sfu, "spatial")
    if from_sfu:
        return from_sfu, "sfu"
    widths = [
        (s["t"], layer_from_width(s.get("width"), top_width)) for s in subscriber if s.get("width")
    ]
    return sorted(widths), "frame_width"


def decoded_layers(subscriber: Sequence[dict], top_width: int) -> Series:
    """The layer the viewer decodes (from its frame width), at samples where frames advanced:
    a frozen picture does not count as being on its layer."""
    out: Series = []
    previous = None
    for s in sorted(subscriber, key=lambda s: s["t"]):
        frames = s.get("frames_decoded")
        layer = layer_from_width(s.get("width"), top_width)
        if frames is not None and previous is not None and frames > previous and layer is not None:
            out.append((s["t"], layer))
        if frames is not None:
            previous = frames
    return out


def changes(values: Series, t0: float, t1: float) -> int:
    """How many times the value changed between t0 and t1."""
    count = 0
    previous = value_at(values, t0)
    for ts, v in values:
        if t0 < ts <= t1:
            if previous is not None and v != previous:
                count += 1
            previous = v
    return count


def time_on(values: Series, t0: float, t1: float) -> dict[Any, float]:
    """Seconds each value was held between t0 and t1 (a sample holds until the next one)."""
    held: dict[Any, float] = {}
    if t1 <= t0:
        return held
    points = [(t0, value_at(values, t0))] + [(ts, v) for ts, v in values if t0 < ts < t1]
    for (ts, v), (nxt, _) in zip(points, points[1:] + [(t1, None)], strict=True):
        if v is not None:
            held[v] = held.get(v, 0.0) + nxt - ts
    return held


# ---------------------------------------------------------------------- link and layers


def capacity_events(capacity: Sequence[tuple[float, float | None]]) -> dict[str, Any]:
    """The first fall of the downlink rate and the rise that ends it, from the lab's log.

    Returns {"t_drop", "low_kbps", "t_recover", "high_kbps"}, each None when there is none
    (None as a rate means unlimited).
    """
    out: dict[str, Any] = {"t_drop": None, "low_kbps": None, "t_recover": None, "high_kbps": None}
    previous: float | None = None
    first = True
    for t, kbps in capacity:
        rate = math.inf if kbps is None else kbps
        if out["t_drop"] is None:
            if not first and previous is not None and rate < previous:
                out["t_drop"], out["low_kbps"] = t, kbps
        elif rate > (out["low_kbps"] if out["low_kbps"] is not None else math.inf):
            out["t_recover"], out["high_kbps"] = t, kbps
            break
        previous = rate
        first = False
    return out


def layer_bitrates(sfu: Sequence[dict]) -> tuple[dict[int, float], str]:
    """Median bitrate of each of the publisher's spatial layers, as the SFU reported them."""
    seen: dict[int, list[float]] = {}
    for sample in sfu:
        for spatial, bps in (sample.get("layers") or {}).items():
            if bps:
                seen.setdefault(int(spatial), []).append(float(bps))
    if seen:
        return {s: statistics.median(v) for s, v in sorted(seen.items())}, "sfu"
    return dict(NOMINAL_LAYER_BPS), "nominal"


def configured_top(sfu: Sequence[dict]) -> int | None:
    """The publisher's highest spatial layer as the SFU lists it, whether it flows or not (a
    browser may pause its top layer; a viewer is only "on top" when it gets that one)."""
    spatial = [int(k) for sample in sfu for k in (sample.get("layers") or {})]
    return max(spatial) if spatial else None


def fits(bps: float | None, capacity_kbps: float | None) -> bool:
    if capacity_kbps is None:
        return True
    if bps is None:
        return False
    return bps * FIT_HEADROOM <= capacity_kbps * 1000


def best_fitting_layer(bitrates: dict[int, float], capacity_kbps: float | None) -> int | None:
    """The highest spatial layer that fits the link (None if not even the lowest does)."""
    fitting = [s for s, bps in bitrates.items() if fits(bps, capacity_kbps)]
    return max(fitting) if fitting else None


# ---------------------------------------------------------------------- the figures


def adapt_down_s(
    layers: Series,
    bitrates: dict[int, float],
    t_drop: float,
    capacity_kbps: float | None,
    t_until: float | None = None,
) -> float | None:
    """Seconds from the drop to the first sample on a layer that fits the new capacity."""
    at_drop = value_at(layers, t_drop)
    if at_drop is not None and fits(bitrates.get(at_drop), capacity_kbps):
        return 0.0
    for t, spatial in layers:
        if t < t_drop:
            continue
        if t_until is not None and t > t_until:
            break
        if fits(bitrates.get(spatial), capacity_kbps):
            return round(t - t_drop, 3)
    return None


def adapt_up_s(
    layers: Series, top: int | None, t_recover: float, t_until: float | None = None
) -> float | None:
    """Seconds from the recovery to the first sample on the top layer (None if never)."""
    if top is None:
        return None
    at_recover = value_at(layers, t_recover)
    if at_recover is not None and at_recover >= top:
        return 0.0
    for t, spatial in layers:
        if t < t_recover:
            continue
        if t_until is not None and t > t_until:
            break
        if spatial >= top:
            return round(t - t_recover, 3)
    return None


def freeze_pct(subscriber: Sequence[dict], t0: float, t1: float) -> float | None:
    """Share of [t0, t1] the subscriber's video was frozen, in percent (see module doc)."""
    if t1 <= t0:
        return None
    frozen = counter_delta(subscriber, "freezes_s", t0, t1)
    frames = series(subscriber, "frames_decoded")
    if frozen is None and not frames:
        return None
    frozen = frozen or 0.0
    # a freeze still open at t1: frames stopped and WebRTC has not counted it yet
    last_change = None
    previous = None
    for t, n in frames:
        if t > t1:
            break
        if previous is None or n != previous:
            last_change = t
        previous = n
    if last_change is not None:
        open_s = t1 - max(last_change, t0)
        if open_s > OPEN_FREEZE_MIN_S:
            frozen += open_s
    return round(100.0 * min(frozen, t1 - t0) / (t1 - t0), 2)


def audio_loss_pct(subscriber: Sequence[dict], t0: float, t1: float) -> float | None:
    lost = counter_delta(subscriber, "audio_lost", t0, t1)
    received = counter_delta(subscriber, "audio_received", t0, t1)
    if lost is None or received is None or lost + received <= 0:
        return None
    return round(100.0 * max(0.0, lost) / (lost + received), 2)


def audio_concealed_pct(subscriber: Sequence[dict], t0: float, t1: float) -> float | None:
    """What the viewer heard that its decoder made up: concealed samples (loss concealment,
    not redundancy or FEC that repaired it) over samples received, in percent."""
    concealed = counter_delta(subscriber, "audio_concealed", t0, t1)
    samples = counter_delta(subscriber, "audio_samples", t0, t1)
    if concealed is None or not samples or samples <= 0:
        return None
    return round(100.0 * max(0.0, concealed) / samples, 2)


def share_pct(samples: Sequence[dict], part: str, whole: str, t0: float, t1: float) -> float | None:
    """Growth of counter `part` as a share of the growth of counter `whole`, in percent."""
    a = counter_delta(samples, part, t0, t1)
    b = counter_delta(samples, whole, t0, t1)
    if a is None or not b:
        return None
    return round(100.0 * a / b, 1)


def rate_series(samples: Sequence[dict], key: str) -> Series:
    """kbit/s between consecutive samples of a byte counter."""
    values = series(samples, key)
    out = []
    for (ta, a), (tb, b) in zip(values, values[1:], strict=False):
        if tb > ta and b >= a:
            out.append((tb, (b - a) * 8 / 1000 / (tb - ta)))
    return out


def run_figures(
    timeline: dict[str, Any],
    duration_s: float,
    top_width: int = 1280,
    settle_from_s: float = SETTLE_FROM_S,
) -> dict[str, Any]:
    """Every figure of one run from its timelines (keys as in the module doc)."""
    sfu = timeline.get("sfu", [])
    sub = timeline.get("subscriber", [])
    capacity = [tuple(c) for c in timeline.get("capacity", [])]
    t0, t1 = 0.0, duration_s
    layers, layer_source = layer_series(sfu, sub, top_width)
    bitrates, bitrate_source = layer_bitrates(sfu)
    top = configured_top(sfu)
    if top is None:
        observed = [v for _, v in layers]
        top = max(observed) if observed else None
    events = capacity_events(capacity)
    out: dict[str, Any] = {
        "layer_source": layer_source,
        "layer_bitrates_bps": {str(k): round(v) for k, v in bitrates.items()},
        "layer_bitrates_source": bitrate_source,
        "top_layer": top,
        "t_drop_s": events["t_drop"],
        "t_recover_s": events["t_recover"],
        "adapt_down_s": None,
        "adapt_up_s": None,
        "adapt_down_decoded_s": None,
        "adapt_up_decoded_s": None,
        "layer_before_drop": None,
        "min_layer_during_drop": None,
        "layer_at_end": value_at(layers, t1),
    }
    if events["t_drop"] is not None:
        t_drop = events["t_drop"]
        t_rec = events["t_recover"] if events["t_recover"] is not None else t1
        out["layer_before_drop"] = value_at(layers, t_drop)
        during = [v for t, v in layers if t_drop <= t <= t_rec]
        out["min_layer_during_drop"] = min(during) if during else None
        out["adapt_down_s"] = adapt_down_s(layers, bitrates, t_drop, events["low_kbps"], t_rec)
        decoded = decoded_layers(sub, top_width)
        out["adapt_down_decoded_s"] = adapt_down_s(
            decoded, bitrates, t_drop, events["low_kbps"], t_rec
        )
        if events["t_recover"] is not None:
            out["adapt_up_s"] = adapt_up_s(layers, top, events["t_recover"], t1)
            out["adapt_up_decoded_s"] = adapt_up_s(decoded, top, events["t_recover"], t1)
    out["freeze_pct"] = freeze_pct(sub, t0, t1)
    freezes = counter_delta(sub, "freeze_count", t0, t1)
    out["freeze_count"] = None if freezes is None else int(freezes)
    spatial_switches = changes(layers, t0, t1)
    server_switches = counter_delta(sfu, "switches", t0, t1)
    out["spatial_switches"] = spatial_switches
    out["layer_switches"] = (
        int(server_switches) if server_switches is not None else spatial_switches
    )
    out["layer_switches_source"] = "sfu" if server_switches is not None else "samples"
    video_bytes = counter_delta(sub, "bytes", t0, t1)
    out["mean_kbps"] = None if video_bytes is None else round(video_bytes * 8 / 1000 / (t1 - t0), 1)
    frames = counter_delta(sub, "frames_decoded", t0, t1)
    out["frames_decoded"] = None if frames is None else int(frames)
    lost = counter_delta(sub, "lost", t0, t1)
    out["video_packets_lost"] = None if lost is None else int(lost)
    out["audio_loss_pct"] = audio_loss_pct(sub, t0, t1)
    out["audio_concealed_pct"] = audio_concealed_pct(sub, t0, t1)
    # how much of the video the viewer received were retransmissions (RTX), over the run and
    # while the link was down
    out["retransmitted_pct"] = share_pct(sub, "rtx_bytes", "bytes", t0, t1)
    out["retransmitted_pct_during_drop"] = (
        share_pct(sub, "rtx_bytes", "bytes", events["t_drop"], events["t_recover"] or t1)
        if events["t_drop"] is not None
        else None
    )
    link = timeline.get("link", [])
    delivered = counter_delta(link, "rx_bytes", t0, t1)
    out["link_mean_kbps"] = (
        None if delivered is None else round(delivered * 8 / 1000 / (t1 - t0), 1)
    )
    drops = counter_increase(link, "queue_drops", t0, t1)
    out["bottleneck_drops"] = None if drops is None else int(drops)
    estimates = [v for t, v in series(sfu, "estimate_bps") if t0 <= t <= t1]
    out["mean_estimate_kbps"] = round(statistics.fmean(estimates) / 1000, 1) if estimates else None
    sources = [v for t, v in series(sfu, "source") if t0 <= t <= t1]
    out["estimate_source"] = max(set(sources), key=sources.count) if sources else None
    # single-phase profiles: where the layer settles, and how steadily
    for key in (
        "expected_layer",
        "settled_layer",
        "settled_share",
        "settled_on_expected_layer",
        "switches_per_min_settled",
        "spatial_switches_per_min_settled",
        "settle_from_s",
    ):
        out[key] = None
    if events["t_drop"] is None and capacity:
        start = min(settle_from_s, t1 / 2)
        out["settle_from_s"] = start
        link_kbps = capacity[-1][1]
        out["expected_layer"] = best_fitting_layer(bitrates, link_kbps)
        held = time_on(layers, start, t1)
        if held:
            settled = max(held, key=held.get)
            out["settled_layer"] = settled
            out["settled_share"] = round(held[settled] / (t1 - start), 3)
            out["settled_on_expected_layer"] = float(settled == out["expected_layer"])
        settled_server = counter_delta(sfu, "switches", start, t1)
        spatial = changes(layers, start, t1)
        n = settled_server if settled_server is not None else spatial
        out["switches_per_min_settled"] = round(n * 60 / (t1 - start), 2)
        out["spatial_switches_per_min_settled"] = round(spatial * 60 / (t1 - start), 2)
    return out


def check_targets(profile: str, figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{figure: {value, op, limit, met}} for the profile's targets (missing value: not met)."""
    checks = {}
    for key, (op, limit) in TARGETS.get(profile, {}).items():
        value = figures.get(key)
        if value is None:
            met = False
        elif op == "<=":
            met = value <= limit
        elif op == ">=":
            met = value >= limit
        else:
            met = value == limit
        checks[key] = {"value": value, "op": op, "limit": limit, "met": met}
    return checks


# ---------------------------------------------------------------------- presenting


def layer_name(spatial: int | None) -> str:
    if spatial is None:
        return "-"
    return RIDS[spatial] if 0 <= spatial < len(RIDS) else str(spatial)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(runs: dict[str, dict[str, Any]]) -> str:
    """One row per run: the figures, and the targets' verdict (bwe on only). `sw/min (sp)`:
    switches a minute once settled, all (spatial only); `other%`: CPU that other processes on
    the machine used during the run, in % of one core."""
    header = (
        f"{'run':28}{'down s':>8}{'up s':>8}{'freeze%':>9}{'switch':>8}{'sw/min (sp)':>13}"
        f"{'settled':>9}{'kbps':>8}{'frames':>8}{'aloss%':>8}{'acncl%':>8}{'other%':>8}"
        "  targets"
    )
    lines = [header, "-" * len(header)]
    for key, run in runs.items():
        settled = run.get("settled_layer")
        settled_txt = (
            "-"
            if settled is None
            else f"{layer_name(settled)} {int(round(100 * (run.get('settled_share') or 0)))}%"
        )
        per_min = _fmt(run.get("switches_per_min_settled"))
        if run.get("spatial_switches_per_min_settled") is not None:
            per_min += f" ({_fmt(run['spatial_switches_per_min_settled'])})"
        targets = run.get("targets") or {}
        if run.get("bwe") == "off":
            verdict = "(baseline)"
        elif not targets:
            verdict = "(none set)"
        else:
            failed = [k for k, c in targets.items() if not c["met"]]
            verdict = "met" if not failed else "NOT met: " + ", ".join(failed)
        lines.append(
            f"{key:28}{_fmt(run.get('adapt_down_s')):>8}{_fmt(run.get('adapt_up_s')):>8}"
            f"{_fmt(run.get('freeze_pct'), 2):>9}{_fmt(run.get('layer_switches')):>8}"
            f"{per_min:>13}{settled_txt:>9}"
            f"{_fmt(run.get('mean_kbps'), 0):>8}{_fmt(run.get('frames_decoded')):>8}"
            f"{_fmt(run.get('audio_loss_pct'), 2):>8}"
            f"{_fmt(run.get('audio_concealed_pct'), 2):>8}"
            f"{_fmt((run.get('cpu') or {}).get('other_cpu_pct'), 0):>8}  {verdict}"
        )
    return "\n".join(lines)


def smoothed_rate(samples: Sequence[dict], key: str, window_s: float = 1.0) -> Series:
    """kbit/s of a byte counter over a sliding window (steadier than sample to sample)."""
    values = series(samples, key)
    out = []
    j = 0
    for tb, b in values:
        while j < len(values) and values[j][0] < tb - window_s:
            j += 1
        ta, a = values[j]
        if tb - ta >= window_s / 2 and b >= a:
            out.append((tb, (b - a) * 8 / 1000 / (tb - ta)))
    return out


def plot_runs(runs: Sequence[dict[str, Any]], path: str, title: str = "") -> str:
    """Per run: link capacity, estimate, sent and received rates (top), the forwarded and the
    decoded layer (bottom), over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2 * len(runs),
        1,
        figsize=(12.5, 4.8 * len(runs)),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1.4] * len(runs)},
    )
    for i, run in enumerate(runs):
        ax, low = axes[2 * i, 0], axes[2 * i + 1, 0]
        tl = run["timeline"]
        sfu, sub = tl.get("sfu", []), tl.get("subscriber", [])
        end = run["duration_s"]
        start = min(-1.0, min((s["t"] for s in sub), default=0.0))
        cap = [(t, k) for t, k in tl.get("capacity", [])]
        if cap:
            xs, ys = [], []
            for (t, k), nxt in zip(cap, cap[1:] + [(end, None)], strict=True):
                xs += [max(t, start), nxt[0]]
                ys += [k if k is not None else math.nan] * 2
            ax.plot(xs, ys, color="black", lw=2.2, label="link capacity (downlink)")
        curves = (
            (
                [(t, v / 1000) for t, v in series(sfu, "estimate_bps")],
                "tab:blue",
                1.8,
                "bandwidth estimate (SFU)",
            ),
            (smoothed_rate(sfu, "octets_sent"), "tab:orange", 1.0, "sent to the viewer (SFU, 1 s)"),
            (smoothed_rate(sub, "bytes"), "tab:green", 1.0, "video received (viewer, 1 s)"),
            (
                smoothed_rate(tl.get("link", []), "rx_bytes"),
                "tab:grey",
                1.0,
                "delivered by the link (all packets, 1 s)",
            ),
        )
        for points, color, width, label in curves:
            if points:
                ax.plot(*zip(*points, strict=True), color=color, lw=width, label=label)
        ax.set_xlim(start, end)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("kbit/s")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        figures = (
            f"down {_fmt(run.get('adapt_down_s'))} s, up {_fmt(run.get('adapt_up_s'))} s, "
            f"freeze {_fmt(run.get('freeze_pct'), 2)} %, switches {_fmt(run.get('layer_switches'))}"
        )
        ax.set_title(f"{run['profile']}, bwe {run['bwe']}: {figures}", fontsize=10)
        top_width = run.get("top_width", 1280)
        layers, source = layer_series(sfu, sub, top_width)
        if layers:
            low.step(
                *zip(*layers, strict=True),
                where="post",
                color="tab:red",
                lw=2,
                label=f"forwarded ({source})",
            )
        decoded = decoded_layers(sub, top_width)
        if decoded:
            low.plot(
                *zip(*decoded, strict=True),
                ".",
                color="tab:purple",
                ms=3,
                label="decoded (viewer frame size)",
            )
        for t in (run.get("t_drop_s"), run.get("t_recover_s")):
            if t is not None:
                for a in (ax, low):
                    a.axvline(t, color="grey", lw=0.8, ls="--")
        low.set_xlim(start, end)
        low.set_ylim(-0.4, len(RIDS) - 0.6)
        low.set_yticks(range(len(RIDS)))
        low.set_yticklabels([f"{r} ({i})" for i, r in enumerate(RIDS)])
        low.set_ylabel("spatial layer")
        low.set_xlabel("seconds since the schedule started (negative: warm-up)")
        low.grid(alpha=0.3)
        low.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
