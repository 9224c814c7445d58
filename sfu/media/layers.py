"""Per-subscriber simulcast layer selection: which spatial/temporal layer to forward, and when.

A pure state machine (no I/O, time passed in) that a subscriber's forwarder drives:

- inputs: the publisher's layers and their measured bitrates (`set_layer_bitrates`), what the
  subscriber asks for (`set_requested`), the bandwidth estimate (`update`), keyframes seen per
  spatial layer (`on_keyframe`) and probe outcomes (`on_probe_result`);
- outputs: `target` (where we want to be), `current` (what is forwarded now), a throttled
  keyframe request (`keyframe_request`), a probe request (`take_probe_request`), and
  `on_switch(old, new, reason)` events.

Rules, chosen so that a viewer on a weak link gets the best layer it can carry without flapping:

- Down at once: when the estimate falls below the target layer's bitrate (or the requested
  maximum drops, or the layer disappears), the target becomes the best layer that fits; after
  a severe fall (below half the layer) the spatial layer is chosen for half the estimate, as
  a falling link's first measurements are above where it lands. While the keyframe of the
  lower spatial layer is awaited, the current layer is cut to its base temporal layer (a
  keyframe-free rate cut), or not sent at all if even that exceeds the estimate (draining).
- Above the lowest spatial layer only full frame rates are offered by default
  (`full_frame_rate_above_base`).
- Up with hysteresis: only to a layer whose bitrate x `up_ratio` (1.15) the estimate has stayed
  above for `up_hold_s`, and only after a probe at that rate succeeded (the estimate alone can
  be optimistic); more temporal layers of the current spatial layer need no probe. When the
  sender is application-limited the estimate cannot rise by itself, so
  the selector asks for exploratory probes every `explore_interval_s` (backing off on failure).
- Keyframe-gated: a spatial switch completes only when a keyframe of the target spatial layer
  arrives (at start, any keyframe of a layer at or below the target starts the stream).
  Temporal switches within the current spatial layer apply at once (the forwarder applies them
  on frames where that is safe).
- No flapping: a down move within `flap_window_s` of an up move doubles the hold time (up to
  `flap_hold_max_s`); it decays back after a stable window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Cumulative share of a spatial layer's bitrate carried by temporal layers 0..n-1 (libvpx's
# usual VP8 allocations), used when only a layer's total bitrate is known.
DEFAULT_TEMPORAL_SHARES: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (0.6, 1.0),
    3: (0.4, 0.6, 1.0),
}

RID_TO_SPATIAL = {"q": 0, "h": 1, "f": 2}


@dataclass(frozen=True, order=True)
class Layer:
    spatial: int
    temporal: int


@dataclass(frozen=True)
class ProbeRequest:
    """Probe at `bitrate_bps` in total (media + padding/RTX), to justify moving up to `layer`."""

    bitrate_bps: int
    layer: Layer
    exploratory: bool


@dataclass
class LayerConfig:
    up_ratio: float = 1.15
    up_hold_s: float = 3.0
    down_ratio: float = 1.0
    probe_required: bool = True
    probe_success_ratio: float = 0.9  # a probe counts for layers it reached this x up_ratio x
    probe_valid_s: float = 5.0
    probe_timeout_s: float = 2.0
    probe_max_multiple: float = 2.0  # exploratory probes at most this x the estimate
    explore_interval_s: float = 3.0
    explore_backoff_max_s: float = 6.0
    # After the link fell (a severe drop), for this long, while below the layer it fell from,
    # failed exploratory probes back off to at most `explore_recover_interval_s`: links that
    # fall often come back (a tunnel, a handover), and the viewer should be back on its layer
    # within seconds, not after the 6 s a long outage's backoff reached (weak-link lab:
    # drop-recover up 8 s). A link that never carried more keeps the long backoff.
    explore_recover_interval_s: float = 2.0
    recover_window_s: float = 60.0
    # asking again after this long (Chrome ignores requests within 300 ms of the last one)
    keyframe_interval_s: float = 0.35
    flap_window_s: float = 10.0
    flap_hold_max_s: float = 30.0
    severe_drop_ratio: float = 0.5  # an estimate below this x the layer: a link change
    # after such a fall the spatial layer is chosen for this x the estimate (see _severe_fit)
    severe_fit_ratio: float = 0.5
    # after such a fall, nothing of the current layer is sent while the lower layer's
    # keyframe is awaited if its base temporal layer needs more than this x the estimate
    drain_ratio: float = 1.0
    probed_hold_s: float = 1.0  # after a successful probe, the estimate must hold this long
    fast_temporal_drop: bool = True
    # Above the lowest spatial layer, only the full frame rate is a layer to rest on: 360p at
    # 30 fps is preferred to 720p at 15 fps. A viewer watching a host move and handle products
    # notices judder more than resolution, and the gap between spatial layers (~3x) is wide
    # enough that an estimate wavering on a far, lossy link does not flip between them, where
    # f at 15 fps and h at 30 fps sit close together (weak-link lab, cross-border). False:
    # resolution first, temporal layers from `spatial_min_temporal` up are offered too.
    full_frame_rate_above_base: bool = True
    # (full_frame_rate_above_base False) above the lowest spatial layer, skip temporal layers
    # below this one (no 7.5 fps HD).
    spatial_min_temporal: int = 1


def split_temporal(total_bps: int, temporal_layers: int) -> list[int]:
    """Cumulative per-temporal-layer bitrates from a spatial layer's total."""
    shares = DEFAULT_TEMPORAL_SHARES.get(temporal_layers)
    if shares is None:
        shares = tuple((t + 1) / temporal_layers for t in range(temporal_layers))
    return [int(total_bps * s) for s in shares]


class LayerSelector:
    """One per (subscriber, simulcast track). See the module docstring for the rules."""

    def __init__(
        self,
        config: LayerConfig | None = None,
        on_switch: Callable[[Layer | None, Layer, str], None] | None = None,
    ) -> None:
        self.config = cfg = config or LayerConfig()
        self.on_switch = on_switch
        self._bitrates: dict[int, list[int]] = {}
        self.max_spatial: int | None = None
        self.max_temporal: int | None = None
        self.current: Layer | None = None
        self.target: Layer | None = None
        self.estimate_bps = 0
        self.switches = 0
        self.spatial_switches = 0
        # Severe congestion: forward nothing of the current layer until the target's keyframe.
        self.draining = False
        self.hold_s = cfg.up_hold_s  # before a spatial move up (grows with spatial flapping)
        self.temporal_hold_s = cfg.up_hold_s  # before a temporal move up (grows, capped at 2x)
        # sliding minimum of the estimate over the hold window: (time, estimate), increasing
        self._mins: deque[tuple[float, float]] = deque()
        self._history_start: float | None = None
        self._last_down = -1e9
        self._last_up = -1e9
        self._last_spatial_up = -1e9
        self._hold_decay_from = -1e9
        self._last_flap = -1e9  # when flapping last grew a hold
        # when `current` last moved up to a higher spatial layer (its keyframe arrived): the
        # keyframe comes as a burst, see BandwidthController
        self.spatial_up_at = -1e9
        self._last_keyframe_request = -1e9
        self._last_keyframe_layer = -1
        self._probe_request: ProbeRequest | None = None
        self._probe_in_flight: ProbeRequest | None = None
        self._probe_sent_at = 0.0
        self._probe_bitrate = 0  # last successful probe result
        self._probe_time = -1e9
        self._explore_next: float | None = None
        self._explore_failures = 0
        self._probe_not_before = -1e9
        self._fell_from: Layer | None = None  # the layer a severe drop left (see _recovering)
        self._fell_at = -1e9

    # ------------------------------------------------------------------ inputs

    def set_layer_bitrates(self, spatial: int, cumulative_bps: Sequence[int]) -> None:
        """Measured bitrates of one spatial layer, cumulative per temporal layer (bps).

        An empty sequence (or zeros) marks the layer inactive (the publisher stopped it).
        Feed smoothed values (a second or two), or keyframe spikes will look like congestion.
        """
        rates = [int(b) for b in cumulative_bps]
        if not rates or rates[-1] <= 0:
            self._bitrates.pop(spatial, None)
        else:
            self._bitrates[spatial] = rates

    def set_requested(self, max_spatial: int | None, max_temporal: int | None = None) -> None:
        """What the subscriber asks for (None: no limit, i.e. "auto")."""
        self.max_spatial = max_spatial
        self.max_temporal = max_temporal

    def on_probe_result(self, bitrate_bps: int | None, now: float) -> None:
        """What the last requested probe achieved (None or 0: it failed or timed out)."""
        self._probe_in_flight = None
        bitrate = bitrate_bps or 0
        cfg = self.config
        ladder = self._ladder()
        reached = [
            layer
            for layer, b in ladder
            if bitrate >= b * cfg.up_ratio * cfg.probe_success_ratio
            and (self.target is None or layer > self.target)
        ]
        if bitrate > 0 and reached:
            self._probe_bitrate = bitrate
            self._probe_time = now
            self._explore_failures = 0
            self._explore_next = now + 1.0  # keep climbing soon if the probe opened more room
        else:
            self._explore_failures += 1
            backoff = cfg.explore_interval_s * (2 ** (self._explore_failures - 1))
            cap = cfg.explore_backoff_max_s
            if self._recovering(now):
                cap = min(cap, cfg.explore_recover_interval_s)
            self._explore_next = now + min(backoff, cap)
            self._probe_not_before = self._explore_next

    def on_keyframe(self, spatial: int, now: float) -> bool:
        """A keyframe of `spatial` arrived from the publisher; True if `current` changed."""
        target = self.target
        if target is None or spatial not in self._bitrates:
            return False
        current = self.current
        if current is None:
            if spatial > target.spatial:
                return False
            top = len(self._bitrates[spatial]) - 1
            new = target if spatial == target.spatial else Layer(spatial, min(target.temporal, top))
            self._set_current(new, "start")
            return True
        if spatial == target.spatial and current.spatial != spatial:
            up = spatial > current.spatial
            if up:
                self.spatial_up_at = now
            self._set_current(target, "up" if up else "down")
            return True
        return False

    def update(self, estimate_bps: float, now: float) -> None:
        """Re-decide with a new estimate; call on each estimate change or periodically."""
        cfg = self.config
        self.estimate_bps = int(estimate_bps)
        self._record(estimate_bps, now)
        self._expire_probe(now)
        ladder = self._ladder()
        if not ladder:
            self.target = None
            return
        layers = [layer for layer, _ in ladder]
        if self.target is None or self.target not in layers:
            # start, a request change or a vanished layer: go straight to what fits (never
            # above the old target: moving up is for the hysteresis path below)
            old = self.target
            below = [
                entry
                for entry in ladder
                if old is None or entry[0] <= old or entry[0].spatial == old.spatial
            ]
            self.target = self._best_fit(below or ladder[:1], estimate_bps)
            if old is not None and self.target < old:
                self._moved_down(now, forced=True)
            self._apply_temporal(now)
            return
        # down at once
        target_bps = dict(ladder)[self.target]
        if estimate_bps < cfg.down_ratio * target_bps:
            # a fall far below the layer is the link changing, not the estimate hovering
            # around a threshold: it does not count as flapping; nor does a second step
            # down with no move up in between (the same fall, measured in two steps)
            severe = estimate_bps < cfg.severe_drop_ratio * target_bps
            if severe:
                new = self._severe_fit(ladder, estimate_bps)
                if self._fell_from is None or not self._recovering(now):
                    self._fell_from = self.target
                self._fell_at = now
            else:
                new = self._best_fit(ladder, estimate_bps)
            if new < self.target:
                spatial_change = new.spatial != self.target.spatial
                cascade = self._last_down > self._last_up
                self.target = new
                self._moved_down(
                    now,
                    forced=False,
                    spatial_change=spatial_change,
                    flap=not severe and not cascade,
                )
                current = self.current
                if (
                    severe
                    and current is not None
                    and new.spatial < current.spatial
                    and estimate_bps < cfg.drain_ratio * self.bitrate_of(Layer(current.spatial, 0))
                ):
                    # Even the current layer's base is beyond the link: what we still send of
                    # it only keeps the bottleneck queue full (the picture freezes anyway).
                    # Send nothing until the lower layer's keyframe, so that the keyframe
                    # finds an empty queue.
                    self.draining = True
                self._apply_temporal(now)
                return
        if self.draining and (self.current is None or self.target.spatial >= self.current.spatial):
            self.draining = False
        # up with hysteresis
        if self.target != layers[-1]:
            self._consider_up(ladder, now)
        if (
            (self.hold_s > cfg.up_hold_s or self.temporal_hold_s > cfg.up_hold_s)
            and self._last_up > self._last_flap
            and now - self._hold_decay_from >= cfg.flap_window_s
        ):
            # an up move after the last flap, then a whole flap window without flapping,
            # earns back half the extra hold (a down move that was no flap, the link
            # falling, does not stop that)
            self.hold_s = max(cfg.up_hold_s, self.hold_s / 2)
            self.temporal_hold_s = max(cfg.up_hold_s, self.temporal_hold_s / 2)
            self._hold_decay_from = now
        self._apply_temporal(now)

    # ------------------------------------------------------------------ outputs

    def keyframe_request(self, now: float) -> int | None:
        """The spatial layer to ask the publisher a keyframe (PLI) for now, or None (throttled)."""
        target = self.target
        if target is None:
            return None
        if self.current is not None and self.current.spatial == target.spatial:
            return None
        # (throttled per layer: when the target moves on to another layer, say a second step
        # down while the link keeps falling, its keyframe is asked for at once)
        if (
            target.spatial == self._last_keyframe_layer
            and now - self._last_keyframe_request < self.config.keyframe_interval_s
        ):
            return None
        self._last_keyframe_request = now
        self._last_keyframe_layer = target.spatial
        return target.spatial

    def take_probe_request(self, now: float) -> ProbeRequest | None:
        """A probe the controller should send now (at most one in flight), or None."""
        request = self._probe_request
        if request is None or self._probe_in_flight is not None:
            return None
        self._probe_request = None
        self._probe_in_flight = request
        self._probe_sent_at = now
        return request

    @property
    def switch_pending(self) -> bool:
        return self.target is not None and (
            self.current is None or self.current.spatial != self.target.spatial
        )

    def bitrate_of(self, layer: Layer) -> int:
        rates = self._bitrates.get(layer.spatial)
        if not rates:
            return 0
        return rates[min(layer.temporal, len(rates) - 1)]

    def snapshot(self) -> dict[str, object]:
        def fmt(layer: Layer | None) -> list[int] | None:
            return None if layer is None else [layer.spatial, layer.temporal]

        return {
            "current": fmt(self.current),
            "target": fmt(self.target),
            "estimate_bps": self.estimate_bps,
            "switches": self.switches,
            "spatial_switches": self.spatial_switches,
            "hold_s": self.hold_s,
            "temporal_hold_s": self.temporal_hold_s,
            "probe_in_flight": self._probe_in_flight is not None,
        }

    # ------------------------------------------------------------------ internals

    def _ladder(self) -> list[tuple[Layer, int]]:
        """Allowed layers in (spatial, temporal) order with their cumulative bitrates."""
        out = []
        spatials = sorted(self._bitrates)
        for s in spatials:
            if self.max_spatial is not None and s > self.max_spatial and s != spatials[0]:
                continue
            rates = self._bitrates[s]
            top = len(rates) - 1
            if self.max_temporal is not None:
                top = min(top, max(self.max_temporal, 0))
            if s == spatials[0]:
                low = 0
            elif self.config.full_frame_rate_above_base:
                low = top
            else:
                low = min(self.config.spatial_min_temporal, top)
            for t in range(low, top + 1):
                if rates[t] > 0:
                    out.append((Layer(s, t), rates[t]))
        return out

    def _severe_fit(self, ladder: list[tuple[Layer, int]], estimate: float) -> Layer:
        """After a severe fall: the spatial layer that fits `severe_fit_ratio` x the estimate
        (the first measurements of a falling link are above where it lands, and each step
        down costs a keyframe), at the best frame rate the whole estimate carries."""
        spatial = self._best_fit(ladder, estimate * self.config.severe_fit_ratio).spatial
        same = [entry for entry in ladder if entry[0].spatial == spatial]
        return self._best_fit(same, estimate)

    @staticmethod
    def _best_fit(ladder: list[tuple[Layer, int]], budget: float) -> Layer:
        best = ladder[0][0]
        for layer, b in ladder:
            if b <= budget:
                best = layer
        return best

    def _record(self, estimate: float, now: float) -> None:
        if self._history_start is None:
            self._history_start = now
        mins = self._mins
        while mins and mins[-1][1] >= estimate:
            mins.pop()
        mins.append((now, estimate))
        horizon = now - max(self.hold_s, self.temporal_hold_s)
        while len(mins) > 1 and mins[0][0] < horizon:
            mins.popleft()

    def _sustained(self, now: float, hold: float) -> float | None:
        """The lowest estimate over the last `hold` seconds, if the history covers them.

        (`_mins` is a monotonic queue: the first entry inside the window is its minimum.)
        """
        if self._history_start is None or now - self._history_start < hold:
            return None
        start = now - hold
        for t, value in self._mins:
            if t >= start:
                return value
        return self._mins[-1][1] if self._mins else None

    def _reset_history(self, now: float) -> None:
        self._mins.clear()
        self._mins.append((now, float(self.estimate_bps)))
        self._history_start = now

    def _moved_down(
        self, now: float, forced: bool, spatial_change: bool = True, flap: bool = True
    ) -> None:
        """After a down move; `forced` when the request or the layers changed, not the link.

        Spatial flapping (a keyframe and a visible jump each time) grows the hold before
        spatial moves up, up to `flap_hold_max_s`; temporal flapping (cheap, undone on the next
        frame) grows only the hold before temporal moves up, at most to twice `up_hold_s`, so
        a viewer whose frame rate wavered on a low layer still climbs as soon as the link can
        carry the next layer.
        """
        cfg = self.config
        if not forced:
            if not flap:
                pass
            elif spatial_change and now - self._last_spatial_up < cfg.flap_window_s:
                self.hold_s = min(self.hold_s * 2, cfg.flap_hold_max_s)
                self._last_flap = now
            elif not spatial_change and now - self._last_up < cfg.flap_window_s:
                self.temporal_hold_s = min(self.temporal_hold_s * 2, 2 * cfg.up_hold_s)
                self._last_flap = now
            self._last_down = now
            self._probe_time = -1e9  # earlier probes no longer vouch for anything
            self._probe_request = None
            self._explore_next = now + cfg.explore_interval_s
            self._reset_history(now)
        current = self.current
        target = self.target
        if (
            cfg.fast_temporal_drop
            and current is not None
            and target is not None
            and target.spatial < current.spatial
            and current.temporal > 0
        ):
            self._set_current(Layer(current.spatial, 0), "down")

    def _consider_up(self, ladder: list[tuple[Layer, int]], now: float) -> None:
        cfg = self.config
        target = self.target
        assert target is not None
        higher = [(layer, b) for layer, b in ladder if layer > target]
        best: Layer | None = None  # the highest layer we may move to now
        unprobed: tuple[Layer, int] | None = None  # the highest held layer lacking a probe
        for layer, b in higher:
            if layer.spatial == target.spatial:
                # more temporal layers: no keyframe, no probe, undone on the next frame
                held = self._held(layer, b, now, self.temporal_hold_s)
                if held:
                    best = layer
                continue
            held = self._held(layer, b, now, self.hold_s)
            probed = self._probed(b, now)
            if held and (probed or not cfg.probe_required):
                best = layer
            elif (
                probed
                and self.hold_s <= cfg.up_hold_s  # no spatial flapping seen lately
                and now - self._last_down >= cfg.flap_window_s
                and self._held(layer, b, now, cfg.probed_hold_s)
            ):
                # a successful probe measured the path at this layer's rate: stronger
                # evidence than the hold time, so a short confirmation is enough (a short
                # probe can slip through a token bucket's burst: the estimate must stay up)
                best = layer
            elif held:
                unprobed = (layer, b)
        if best is not None:
            self._moved_up(best, now)
        if unprobed is not None and (best is None or unprobed[0] > best):
            if (
                self._probe_in_flight is None
                and self._probe_request is None
                and now >= self._probe_not_before
            ):
                self._probe_request = ProbeRequest(
                    int(cfg.up_ratio * unprobed[1]), unprobed[0], False
                )
            return
        if best is not None or not higher or self.target == higher[-1][0]:
            return
        # the estimate does not reach the next layer by itself: explore with a probe
        if self._explore_next is None:
            self._explore_next = now + cfg.explore_interval_s
        if (
            now >= self._explore_next
            and self._probe_in_flight is None
            and self._probe_request is None
            and self.switch_pending is False
        ):
            top_layer, top_bps = higher[-1]
            next_bps = higher[0][1]
            rate = min(
                cfg.up_ratio * top_bps,
                max(cfg.up_ratio * next_bps, cfg.probe_max_multiple * self.estimate_bps),
            )
            self._probe_request = ProbeRequest(int(rate), top_layer, True)

    def _recovering(self, now: float) -> bool:
        """The link fell lately and we are still below the layer it fell from."""
        fell_from = self._fell_from
        return (
            fell_from is not None
            and now - self._fell_at < self.config.recover_window_s
            and self.target is not None
            and self.target < fell_from
        )

    def _held(self, layer: Layer, bitrate: int, now: float, hold: float) -> bool:
        """The estimate stayed above this layer's bitrate x up_ratio for `hold` seconds."""
        sustained = self._sustained(now, hold)
        return sustained is not None and sustained >= self.config.up_ratio * bitrate

    def _moved_up(self, layer: Layer, now: float) -> None:
        assert self.target is not None
        if layer.spatial != self.target.spatial:
            self._last_spatial_up = now
        self.target = layer
        self._last_up = self._hold_decay_from = now

    def _probed(self, bitrate: int, now: float) -> bool:
        """A recent probe (since the last down move) carried this layer's bitrate x up_ratio."""
        cfg = self.config
        return (
            now - self._probe_time <= cfg.probe_valid_s
            and self._probe_time > self._last_down
            and self._probe_bitrate >= bitrate * cfg.up_ratio * cfg.probe_success_ratio
        )

    def _expire_probe(self, now: float) -> None:
        if (
            self._probe_in_flight is not None
            and now - self._probe_sent_at > self.config.probe_timeout_s
        ):
            self.on_probe_result(None, now)

    def _apply_temporal(self, now: float) -> None:
        """Temporal changes within the current spatial layer need no keyframe."""
        current, target = self.current, self.target
        if current is None or target is None:
            return
        if current.spatial == target.spatial and current.temporal != target.temporal:
            reason = "up" if target.temporal > current.temporal else "down"
            self._set_current(target, reason)

    def _set_current(self, layer: Layer, reason: str) -> None:
        old = self.current
        if old == layer:
            return
        self.current = layer
        self.switches += 1
        if old is None or old.spatial != layer.spatial:
            self.draining = False
        if old is not None and old.spatial != layer.spatial:
            self.spatial_switches += 1
        if self.on_switch is not None:
            self.on_switch(old, layer, reason)
