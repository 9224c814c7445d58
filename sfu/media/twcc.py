"""Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01).

The send-side bandwidth estimator needs, for every packet we sent, when it left and when (or
whether) it arrived. The receiver reports arrivals in RTCP RTPFB fmt 15 packets; this module
parses and builds those packets and joins them with our own send log:

- `TwccFeedback` is one feedback packet: `parse()` reads the bytes `sfu.media.rtcp` hands back
  as `UnknownRtcp(packet_type=205, fmt=15, data=...)`, `serialize()` writes them again, and
  `from_arrivals()` builds one from arrival times (used when the SFU is the receiver).
- `TransportSequencer` stamps transport-wide sequence numbers on outgoing packets, remembers
  send time and size in a fixed ring (no per-packet allocation beyond a tuple), and turns
  feedback into `PacketResult(send_time, arrival_time | None, size, seq, cluster)` records,
  coping with 16-bit wrap, 24-bit reference-time wrap, losses, reordering and repeats.
- `TwccRecorder` is the receive side: it logs arrivals and emits feedback packets.

Wire layout of the feedback control information (after the 12-byte RTCP feedback header):

    base sequence number (16) | packet status count (16)
    reference time (24, signed, 64 ms units) | feedback packet count (8)
    packet chunks (16 bits each) ... then receive deltas (8 or 16 bits each), zero padding

A chunk is either a run length (T=0, 2-bit symbol, 13-bit run) or a status vector (T=1;
S=0: fourteen 1-bit symbols, S=1: seven 2-bit symbols). Symbols: 0 not received, 1 received
with a small delta (1 byte, 0..63.75 ms), 2 received with a large or negative delta (2 bytes,
signed). Deltas are in 250 us ticks, the first relative to the reference time, each next one
relative to the previous received packet.

Bounds (the packet comes from the network): a run length chunk may claim 8191 statuses in two
bytes, so a 40-byte packet can claim 65535 lost packets. `parse()` therefore keeps statuses as
runs (`StatusRuns`: memory and time proportional to the packet's length, never to the counts it
claims), and `TransportSequencer.on_feedback()` walks a run of losses only over the packets it
sent, still remembers and has not reported yet: each sent packet yields at most one "lost" and
one "received" result over its lifetime, whatever the feedback claims.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from typing import NamedTuple, overload

RTCP_RTPFB = 205
FMT_TWCC = 15

NOT_RECEIVED = 0
SMALL_DELTA = 1
LARGE_DELTA = 2

TICK_US = 250  # receive delta unit
REFERENCE_US = 64_000  # reference time unit
TICKS_PER_REFERENCE = REFERENCE_US // TICK_US  # 256
_REFERENCE_WRAP = 1 << 24
_MAX_RUN = (1 << 13) - 1
_MAX_STATUS_COUNT = 0xFFFF

_FB_HEADER = struct.Struct("!BBHIIHHI")  # V/P/FMT, PT, length, sender, media, base, count, ref|fbc
_I16 = struct.Struct("!h")


class PacketResult(NamedTuple):
    """One sent packet joined with the receiver's report; the estimator's input.

    Times are in seconds: `send_time` on our clock, `arrival_time` on the receiver's clock
    (only differences between arrivals mean anything) or None if the packet was reported lost.
    """

    send_time: float
    arrival_time: float | None
    size: int
    seq: int = 0  # unwrapped transport-wide sequence number
    cluster: int = -1  # probe cluster id the packet was sent in, -1 for none


class StatusRuns(Sequence[int]):
    """Packet status symbols stored as runs: what `TwccFeedback.parse()` hands back.

    Reads like the list of symbols (len, index, iterate, compare with a list), but a run length
    chunk costs one entry however many statuses it claims. `runs` is the (symbol, count) list,
    adjacent runs of the same symbol merged; its length is at most one per status vector symbol
    or run chunk of the packet, so it is bounded by the packet's length.
    """

    __slots__ = ("runs", "_starts", "_len")

    def __init__(self, runs: Iterable[tuple[int, int]] = ()) -> None:
        merged: list[tuple[int, int]] = []
        for symbol, count in runs:
            if count <= 0:
                continue
            if merged and merged[-1][0] == symbol:
                merged[-1] = (symbol, merged[-1][1] + count)
            else:
                merged.append((symbol, count))
        self.runs = merged
        self._len = sum(count for _, count in merged)
        self._starts: list[int] | None = None

    @classmethod
    def from_merged(cls, runs: list[tuple[int, int]], length: int) -> StatusRuns:
        """Adopt runs that are merged already and add up to `length` (the parser's)."""
        self = cls.__new__(cls)
        self.runs = runs
        self._len = length
        self._starts = None
        return self

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return list(self)[index]
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError("status index out of range")
        if self._starts is None:
            self._starts = list(accumulate((count for _, count in self.runs[:-1]), initial=0))
        return self.runs[bisect_right(self._starts, index) - 1][0]

    def __iter__(self) -> Iterator[int]:
        for symbol, count in self.runs:
            yield from repeat(symbol, count)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StatusRuns):
            return self.runs == other.runs
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == self._len and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like the list it stands for

    def __repr__(self) -> str:
        return f"StatusRuns({self.runs!r})"


def status_runs(statuses: Sequence[int]) -> list[tuple[int, int]]:
    """(symbol, count) runs of any status sequence (a `StatusRuns` hands its own back)."""
    if isinstance(statuses, StatusRuns):
        return statuses.runs
    runs: list[tuple[int, int]] = []
    for symbol in statuses:
        if runs and runs[-1][0] == symbol:
            runs[-1] = (symbol, runs[-1][1] + 1)
        else:
            runs.append((symbol, 1))
    return runs


@dataclass
class TwccFeedback:
    """One transport-cc feedback packet.

    `statuses` holds one symbol per reported packet (base_seq, base_seq + 1, ...): a list when
    built here, a `StatusRuns` when parsed (its size follows the packet's length, not the
    status count the packet claims). `deltas` holds one receive delta in 250 us ticks per
    received packet, in the same order; received statuses each take a delta byte, so their
    number is bounded by the packet's length too.
    """

    sender_ssrc: int
    media_ssrc: int
    base_seq: int
    reference_time: int  # 24 bits, 64 ms units, receiver's clock
    fb_count: int  # 8 bits, incremented per feedback packet sent
    statuses: Sequence[int] = field(default_factory=list)
    deltas: list[int] = field(default_factory=list)

    # ------------------------------------------------------------------ reading

    @classmethod
    def parse(cls, data: bytes) -> TwccFeedback:
        """Parse one whole RTCP packet (header included); raises ValueError if malformed.

        ValueError is the only exception it raises for any input. Time and memory are
        proportional to `len(data)`: runs stay runs (see `StatusRuns`).
        """
        if len(data) < 20:
            raise ValueError("transport-cc feedback shorter than 20 bytes")
        b0, ptype, words, sender, media, base, count, ref_fbc = _FB_HEADER.unpack_from(data, 0)
        if b0 >> 6 != 2:
            raise ValueError("RTCP version is not 2")
        if ptype != RTCP_RTPFB or b0 & 0x1F != FMT_TWCC:
            raise ValueError(f"not a transport-cc feedback packet (PT {ptype}, FMT {b0 & 0x1F})")
        end = 4 + 4 * words
        if end > len(data):
            raise ValueError("transport-cc feedback truncated (length field exceeds data)")
        if b0 & 0x20:  # padding: the last byte counts the padding bytes
            pad = data[end - 1]
            if pad == 0 or end - pad < 20:
                raise ValueError("bad RTCP padding")
            end -= pad
        pos = 20
        runs: list[tuple[int, int]] = []  # (symbol, count), adjacent equal symbols merged
        symbol, run = -1, 0  # the run being built
        left = count
        while left:
            if pos + 2 > end:
                raise ValueError("transport-cc packet chunks truncated")
            chunk = (data[pos] << 8) | data[pos + 1]
            pos += 2
            if not chunk & 0x8000:  # run length chunk
                s = (chunk >> 13) & 0x3
                if s == 3:
                    raise ValueError("reserved status symbol in run length chunk")
                n = min(chunk & _MAX_RUN, left)
                left -= n
                if s == symbol:
                    run += n
                elif n:
                    if run:
                        runs.append((symbol, run))
                    symbol, run = s, n
                continue
            if not chunk & 0x4000:  # status vector, fourteen 1-bit symbols
                n = min(14, left)
                shift, width, mask = 13, 1, 0x1
            else:  # status vector, seven 2-bit symbols
                n = min(7, left)
                shift, width, mask = 12, 2, 0x3
            left -= n
            for _ in range(n):
                s = (chunk >> shift) & mask
                shift -= width
                if s == symbol:
                    run += 1
                    continue
                if s == 3:
                    raise ValueError("reserved status symbol in status vector chunk")
                if run:
                    runs.append((symbol, run))
                symbol, run = s, 1
        if run:
            runs.append((symbol, run))
        received = sum(n for s, n in runs if s)
        if received > end - pos:  # each received status needs at least one delta byte
            raise ValueError("transport-cc receive deltas truncated")
        deltas: list[int] = []
        for s, n in runs:
            if s == SMALL_DELTA:
                if pos + n > end:
                    raise ValueError("transport-cc receive deltas truncated")
                deltas += data[pos : pos + n]
                pos += n
            elif s == LARGE_DELTA:
                if pos + 2 * n > end:
                    raise ValueError("transport-cc receive deltas truncated")
                deltas += (
                    struct.unpack_from(f"!{n}h", data, pos)
                    if n > 1
                    else _I16.unpack_from(data, pos)
                )
                pos += 2 * n
        statuses = StatusRuns.from_merged(runs, count)
        return cls(sender, media, base, ref_fbc >> 8, ref_fbc & 0xFF, statuses, deltas)

    def arrivals(self) -> list[tuple[int, int | None]]:
        """(16-bit sequence number, arrival in us since the reference-time origin or None)."""
        out: list[tuple[int, int | None]] = []
        ticks = _signed24(self.reference_time) * TICKS_PER_REFERENCE
        d = 0
        for i, symbol in enumerate(self.statuses):
            seq = (self.base_seq + i) & 0xFFFF
            if symbol == NOT_RECEIVED:
                out.append((seq, None))
            else:
                ticks += self.deltas[d]
                d += 1
                out.append((seq, ticks * TICK_US))
        return out

    # ------------------------------------------------------------------ writing

    def serialize(self) -> bytes:
        """The RTCP packet, zero-padded to 32 bits (P bit set, as libwebrtc does)."""
        n_received = sum(1 for s in self.statuses if s != NOT_RECEIVED)
        if n_received != len(self.deltas):
            raise ValueError("one receive delta is needed per received packet")
        if len(self.statuses) > _MAX_STATUS_COUNT:
            raise ValueError("too many packets for one feedback packet")
        body = bytearray()
        for chunk in _encode_chunks(self.statuses):
            body += chunk.to_bytes(2, "big")
        d = iter(self.deltas)
        for symbol in self.statuses:
            if symbol == SMALL_DELTA:
                delta = next(d)
                if not 0 <= delta <= 0xFF:
                    raise ValueError(f"small receive delta out of range: {delta}")
                body.append(delta)
            elif symbol == LARGE_DELTA:
                delta = next(d)
                if not -0x8000 <= delta <= 0x7FFF:
                    raise ValueError(f"large receive delta out of range: {delta}")
                body += struct.pack("!h", delta)
            elif symbol != NOT_RECEIVED:
                raise ValueError(f"bad status symbol {symbol}")
        pad = -(20 + len(body)) % 4
        flags = 0x80 | FMT_TWCC
        if pad:
            body += bytes(pad - 1) + bytes([pad])
            flags |= 0x20
        words = (20 + len(body)) // 4 - 1
        header = _FB_HEADER.pack(
            flags,
            RTCP_RTPFB,
            words,
            self.sender_ssrc & 0xFFFFFFFF,
            self.media_ssrc & 0xFFFFFFFF,
            self.base_seq & 0xFFFF,
            len(self.statuses),
            ((self.reference_time & 0xFFFFFF) << 8) | (self.fb_count & 0xFF),
        )
        return header + bytes(body)

    @classmethod
    def from_arrivals(
        cls,
        sender_ssrc: int,
        media_ssrc: int,
        base_seq: int,
        arrivals_us: Sequence[int | None],
        fb_count: int = 0,
    ) -> TwccFeedback:
        """Build feedback for packets base_seq, base_seq + 1, ... from arrival times (us).

        Arrival times are quantised to 250 us ticks without drift (each delta is taken between
        quantised times). Raises ValueError if a delta needs more than 16 bits; use
        `TwccRecorder` to split such runs across packets.
        """
        first = next((a for a in arrivals_us if a is not None), None)
        ref = (int(first) // REFERENCE_US) if first is not None else 0
        prev = ref * TICKS_PER_REFERENCE
        statuses: list[int] = []
        deltas: list[int] = []
        for arrival in arrivals_us:
            if arrival is None:
                statuses.append(NOT_RECEIVED)
                continue
            ticks = int(arrival) // TICK_US
            delta = ticks - prev
            prev = ticks
            if 0 <= delta <= 0xFF:
                statuses.append(SMALL_DELTA)
            elif -0x8000 <= delta <= 0x7FFF:
                statuses.append(LARGE_DELTA)
            else:
                raise ValueError(f"receive delta {delta} ticks does not fit in 16 bits")
            deltas.append(delta)
        return cls(
            sender_ssrc, media_ssrc, base_seq & 0xFFFF, ref & 0xFFFFFF, fb_count, statuses, deltas
        )


def _signed24(value: int) -> int:
    value &= 0xFFFFFF
    return value - _REFERENCE_WRAP if value & 0x800000 else value


def _encode_chunks(statuses: Sequence[int]) -> Iterable[int]:
    """Greedy chunking: long runs as run length, mixed stretches as the densest status vector."""
    n = len(statuses)
    i = 0
    while i < n:
        symbol = statuses[i]
        run = 1
        while i + run < n and statuses[i + run] == symbol and run < _MAX_RUN:
            run += 1
        if run >= 14 or i + run == n:
            yield (symbol << 13) | run
            i += run
            continue
        window = statuses[i : i + 14]
        if all(s <= SMALL_DELTA for s in window):
            chunk = 0x8000
            for k, s in enumerate(window):
                chunk |= s << (13 - k)
            yield chunk
            i += len(window)
        elif run >= 7:
            yield (symbol << 13) | run
            i += run
        else:
            window = statuses[i : i + 7]
            chunk = 0xC000
            for k, s in enumerate(window):
                chunk |= s << (12 - 2 * k)
            yield chunk
            i += len(window)


# ---------------------------------------------------------------------- send side


class TransportSequencer:
    """Stamps transport-wide sequence numbers and joins feedback with what was sent.

    One per subscriber transport. `next_seq()` is called on the hot path: it writes into
    preallocated arrays, so a ring of `history` packets costs 25 bytes each and no objects.
    Feedback for packets older than the ring, or never sent, is ignored.
    """

    _UNREPORTED, _LOST, _RECEIVED = 0, 1, 2

    def __init__(self, history: int = 4096, start_seq: int = 0) -> None:
        if history & (history - 1) or history < 64:
            raise ValueError("history must be a power of two >= 64")
        self._mask = history - 1
        self._next = start_seq & 0xFFFF
        self._first = self._next  # the first number stamped: nothing before it was sent
        self._ext = array("q", [-1]) * history
        self._send = array("d", [0.0]) * history
        self._size = array("i", [0]) * history
        self._cluster = array("i", [-1]) * history
        self._state = bytearray(history)  # _UNREPORTED, _LOST or _RECEIVED; find() skips runs
        self._ref_ext: int | None = None  # unwrapped reference time of the last feedback
        self._ref_raw = 0
        self._last_fb_count: int | None = None
        self.feedback_packets = 0
        self.feedback_gaps = 0  # feedback packets that never arrived (by fb_count)

    @property
    def last_seq(self) -> int:
        """The unwrapped sequence number of the last packet stamped (start - 1 if none)."""
        return self._next - 1

    def next_seq(self, size: int, now: float, cluster: int = -1) -> int:
        """Record a packet of `size` bytes sent at `now`; returns the 16-bit number to stamp."""
        ext = self._next
        self._next = ext + 1
        i = ext & self._mask
        self._ext[i] = ext
        self._send[i] = now
        self._size[i] = size
        self._cluster[i] = cluster
        self._state[i] = 0
        return ext & 0xFFFF

    def mark_sent(self, seq: int, now: float) -> None:
        """Correct the send time of a stamped packet (for a pacer that sends it later)."""
        ext = self._unwrap(seq)
        i = ext & self._mask
        if self._ext[i] == ext:
            self._send[i] = now

    def _unwrap(self, seq: int) -> int:
        last = self._next - 1
        return last - ((last - seq) & 0xFFFF)

    def on_feedback(self, feedback: TwccFeedback | bytes) -> list[PacketResult]:
        """Join one feedback packet with the send log, in sequence order.

        A packet is reported at most once as lost and at most once as received (a later
        feedback may report a packet that was lost earlier as received: it is then returned
        again with its arrival time). Unknown or too old sequence numbers are skipped.

        Raises ValueError (only) for malformed bytes. The work is bounded whatever the feedback
        claims: runs of losses are walked only over the packets still in the ring and not yet
        reported (a C-level search per run, one step per result), received statuses cost one
        step each but each needs a delta byte in the packet. So results never outnumber the
        packets sent, and over a packet's lifetime it yields at most two.
        """
        fb = feedback if isinstance(feedback, TwccFeedback) else TwccFeedback.parse(feedback)
        self.feedback_packets += 1
        if self._last_fb_count is not None:
            gap = (fb.fb_count - self._last_fb_count - 1) & 0xFF
            if gap < 128:
                self.feedback_gaps += gap
        self._last_fb_count = fb.fb_count
        raw = fb.reference_time & 0xFFFFFF
        if self._ref_ext is None:
            self._ref_ext = _signed24(raw)
        else:
            step = (raw - self._ref_raw) & 0xFFFFFF
            if step >= 1 << 23:
                step -= _REFERENCE_WRAP
            self._ref_ext += step
        self._ref_raw = raw
        ticks = self._ref_ext * TICKS_PER_REFERENCE
        results: list[PacketResult] = []
        mask = self._mask
        state, send, size, cluster = self._state, self._send, self._size, self._cluster
        # The packets we still know: every ring slot in [lo, hi] holds that very packet.
        hi = self._next - 1
        lo = max(self._next - (mask + 1), self._first)
        deltas = fb.deltas
        d = 0
        ext = self._unwrap(fb.base_seq)
        for symbol, count in status_runs(fb.statuses):
            stop = ext + count
            if symbol == NOT_RECEIVED:
                a, b = max(ext, lo), min(stop, hi + 1)
                while a < b:
                    i = a & mask
                    j = i + min(b - a, mask + 1 - i)  # up to b or the ring's end
                    k = state.find(self._UNREPORTED, i, j)
                    if k < 0:
                        a += j - i
                        continue
                    a += k - i
                    state[k] = self._LOST
                    results.append(PacketResult(send[k], None, size[k], a, cluster[k]))
                    a += 1
            elif stop <= lo or ext > hi:  # none of these packets is known: only the clock moves
                ticks += sum(deltas[d : d + count])
                d += count
            else:
                for e in range(ext, stop):
                    ticks += deltas[d]
                    d += 1
                    if lo <= e <= hi:
                        i = e & mask
                        if state[i] != self._RECEIVED:
                            state[i] = self._RECEIVED
                            results.append(
                                PacketResult(
                                    send[i], ticks * (TICK_US / 1e6), size[i], e, cluster[i]
                                )
                            )
            ext = stop
        return results


# ---------------------------------------------------------------------- receive side


class TwccRecorder:
    """Receive side: logs arrivals by transport-wide sequence number and emits feedback.

    Each `build()` reports from the first not yet reported packet up to the highest one
    received; a packet that arrives after it was reported lost is reported again in the next
    feedback (the sender's `TransportSequencer` expects that). A run that cannot be encoded
    in one packet (delta beyond 16 bits, too many packets) is split across packets.

    The sequence numbers come from the publisher: one `build()` reports at most `max_span`
    packets (the newest; a sender that skipped further ahead learns nothing of the ones
    before, which it sent to no one), and forgetting old arrivals costs what was stored, never
    the size of a jump.
    """

    def __init__(
        self,
        sender_ssrc: int = 0,
        media_ssrc: int = 0,
        max_status: int = 2000,
        max_span: int = 4096,
    ) -> None:
        self.sender_ssrc = sender_ssrc
        self.media_ssrc = media_ssrc
        self.max_status = max_status
        self.max_span = max_span
        self._arrivals: dict[int, int] = {}  # unwrapped seq -> arrival us
        self._highest: int | None = None
        self._next_report: int | None = None  # first unwrapped seq not yet reported
        self._oldest = 0  # arrivals below this were pruned
        self._fb_count = 0

    def on_packet(self, seq: int, arrival_us: int) -> None:
        if self._highest is None:
            ext = seq & 0xFFFF
            self._highest = ext
            self._next_report = ext
            self._oldest = ext
        else:
            diff = (seq - self._highest) & 0xFFFF
            ext = self._highest + diff if diff < 0x8000 else self._highest + diff - 0x10000
            if ext > self._highest:
                self._highest = ext
        assert self._next_report is not None
        if ext < self._next_report:
            if self._next_report - ext > 0x4000 or ext in self._arrivals:
                return  # very old or duplicate
            self._next_report = ext  # late arrival of a packet already reported lost
        self._arrivals.setdefault(ext, arrival_us)

    def build(self) -> list[bytes]:
        """Feedback packets for everything not yet reported (empty list if nothing new)."""
        if self._highest is None or self._next_report is None:
            return []
        packets: list[bytes] = []
        highest = self._highest
        start = max(self._next_report, highest - self.max_span + 1)
        while start <= highest:
            first = start
            while self._arrivals.get(first) is None:
                first += 1  # stops at `highest` at the latest: it was received
            prev = (self._arrivals[first] // REFERENCE_US) * TICKS_PER_REFERENCE
            arrivals: list[int | None] = []
            seq = start
            while seq <= highest and len(arrivals) < self.max_status:
                arrival = self._arrivals.get(seq)
                if arrival is not None:
                    ticks = arrival // TICK_US
                    if not -0x8000 <= ticks - prev <= 0x7FFF:
                        break
                    prev = ticks
                arrivals.append(arrival)
                seq += 1
            if any(a is not None for a in arrivals):  # (else: max_status losses in a row)
                while arrivals[-1] is None:  # end on a received packet; the rest next time
                    arrivals.pop()
                    seq -= 1
            fb = TwccFeedback.from_arrivals(
                self.sender_ssrc, self.media_ssrc, start, arrivals, self._fb_count
            )
            self._fb_count = (self._fb_count + 1) & 0xFF
            packets.append(fb.serialize())
            start = seq
        self._next_report = highest + 1
        keep_from = highest - 0x4000
        if keep_from - self._oldest > len(self._arrivals):  # a jump: keep what is left
            self._arrivals = {k: v for k, v in self._arrivals.items() if k >= keep_from}
            self._oldest = keep_from
        while self._oldest < keep_from:
            self._arrivals.pop(self._oldest, None)
            self._oldest += 1
        return packets
