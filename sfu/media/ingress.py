"""Receive-side bookkeeping for one published RTP stream: statistics, loss detection, NACKs.

These are the pieces of an RTP receiver that an SFU still needs once it stops using aiortc's
receivers: reception statistics for receiver reports (RFC 3550 A.1, A.3, A.8), the sender
report clock mapping, and a NACK generator that asks the publisher again for gaps it sees.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rtcp import ReportBlock, ntp_middle

SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000
MAX_MISORDER = 100


class ReceiveStats:
    """RFC 3550 reception statistics for one SSRC."""

    __slots__ = (
        "ssrc",
        "clock_rate",
        "base_seq",
        "max_seq",
        "cycles",
        "received",
        "expected_prior",
        "received_prior",
        "jitter",
        "_transit",
        "started",
        "last_sr_ntp",
        "last_sr_rtp",
        "last_sr_arrival",
        "bytes_received",
    )

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.jitter = 0.0
        self._transit: float | None = None
        self.started = False
        self.last_sr_ntp = 0
        self.last_sr_rtp = 0
        self.last_sr_arrival = 0.0  # monotonic seconds; 0 = no SR yet
        self.bytes_received = 0

    def update(self, seq: int, timestamp: int, arrival_s: float, size: int) -> int:
        """Account one packet; returns how far it moved max_seq (0 for old/duplicate)."""
        self.received += 1
        self.bytes_received += size
        if not self.started:
            self.started = True
            self.base_seq = self.max_seq = seq
            self._transit = arrival_s * self.clock_rate - timestamp
            return 1
        delta = (seq - self.max_seq) % SEQ_MOD
        advanced = 0
        if 0 < delta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += SEQ_MOD
            self.max_seq = seq
            advanced = delta
        elif delta >= SEQ_MOD - MAX_MISORDER or delta == 0:
            pass  # reordered or duplicate
        else:
            # A large jump: the sender restarted. Start the count again from here.
            self.base_seq = self.max_seq = seq
            self.cycles = 0
            self.received = 1
            self.expected_prior = self.received_prior = 0
            advanced = 1
        transit = arrival_s * self.clock_rate - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            self.jitter += (d - self.jitter) / 16.0
        self._transit = transit
        return advanced

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def packets_lost(self) -> int:
        expected = self.extended_max - self.base_seq + 1
        return expected - self.received

    def on_sender_report(self, ntp: int, rtp_ts: int, arrival_s: float) -> None:
        self.last_sr_ntp = ntp
        self.last_sr_rtp = rtp_ts
        self.last_sr_arrival = arrival_s

    def report_block(self, now_s: float) -> ReportBlock:
        """A receiver report block; resets the interval counters (call once per report)."""
        expected = self.extended_max - self.base_seq + 1
        expected_interval = expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior = expected
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        lsr = dlsr = 0
        if self.last_sr_arrival:
            lsr = ntp_middle(self.last_sr_ntp)
            dlsr = int((now_s - self.last_sr_arrival) * 65536)
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=max(-(1 << 23), min(self.packets_lost, (1 << 23) - 1)),
            highest_sequence=self.extended_max & 0xFFFFFFFF,
            jitter=int(self.jitter),
            lsr=lsr,
            dlsr=dlsr,
        )


@dataclass
class _Missing:
    first_seen_s: float
    last_asked_s: float = float("-inf")  # never asked: the first due() asks at once
    asks: int = 0


class NackGenerator:
    """Remembers sequence-number gaps and says which to ask for again, and when.

    A gap is asked for at once, then every `retry_s` up to `max_asks` times, and forgotten
    after `max_age_s` or when the packet arrives (late or retransmitted).
    """

    def __init__(
        self, *, max_age_s: float = 1.0, retry_s: float = 0.1, max_asks: int = 5, max_gap: int = 500
    ) -> None:
        self.max_age_s = max_age_s
        self.retry_s = retry_s
        self.max_asks = max_asks
        self.max_gap = max_gap
        self.missing: dict[int, _Missing] = {}
        self._highest = -1
        self.nacks_sent = 0

    def on_packet(self, seq: int, now_s: float) -> None:
        if self._highest < 0:
            self._highest = seq
            return
        delta = (seq - self._highest) % SEQ_MOD
        if delta == 0:
            return
        if delta < SEQ_MOD // 2:
            if delta > self.max_gap:
                self.missing.clear()  # a restart, not loss
            else:
                for i in range(1, delta):
                    self.missing[(self._highest + i) % SEQ_MOD] = _Missing(now_s)
            self._highest = seq
        elif SEQ_MOD - delta > self.max_gap:
            self.missing.clear()  # far behind: the sender restarted with lower numbers
            self._highest = seq
        elif self.missing:
            self.missing.pop(seq, None)  # a late or repaired packet

    def due(self, now_s: float) -> list[int]:
        """Sequence numbers to put in a NACK now."""
        if not self.missing:
            return []
        result = []
        for seq, m in list(self.missing.items()):
            if now_s - m.first_seen_s > self.max_age_s or m.asks >= self.max_asks:
                del self.missing[seq]
            elif now_s - m.last_asked_s >= self.retry_s:
                m.last_asked_s = now_s
                m.asks += 1
                result.append(seq)
        self.nacks_sent += len(result)
        return result


class PacketCache:
    """The last N packets of a stream by sequence number, for answering NACKs.

    A fixed ring of slots indexed by `seq % size`: storing is two list writes, no allocation.
    """

    __slots__ = ("size", "_mask", "_data", "_headers")

    def __init__(self, size: int = 1024) -> None:
        if size & (size - 1):
            raise ValueError("cache size must be a power of two")
        self.size = size
        self._mask = size - 1
        self._data: list[bytes | None] = [None] * size
        self._headers: list = [None] * size

    def put(self, seq: int, data: bytes, header) -> None:
        i = seq & self._mask
        self._data[i] = data
        self._headers[i] = header

    def get(self, seq: int):
        """(data, header) for `seq`, or None if it was never stored or has been overwritten."""
        i = seq & self._mask
        header = self._headers[i]
        if header is None or header.sequence_number != seq:
            return None
        return self._data[i], header
