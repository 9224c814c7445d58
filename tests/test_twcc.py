"""Transport-cc feedback: hand-built byte vectors, round trips, and the send-log join."""

from __future__ import annotations

import random

import pytest

from sfu.media.rtcp import UnknownRtcp, parse_compound
from sfu.media.twcc import (
    LARGE_DELTA,
    NOT_RECEIVED,
    SMALL_DELTA,
    StatusRuns,
    TransportSequencer,
    TwccFeedback,
    TwccRecorder,
)

# Run length chunk (T=0, S=01 small delta, run 4) across the 16-bit wrap; P bit with 2 pad bytes.
RUN_LENGTH = bytes.fromhex(
    "afcd0006" + "11111111" + "22222222" + "fffe0004" + "00001007" + "2004" + "0400ff01" + "0002"
)
# 1-bit status vector 1101001111(0000) for 10 packets; reference time 0xFFFFFF (= -1, signed).
VECTOR_1BIT = bytes.fromhex(
    "afcd0007"
    + "11111111"
    + "22222222"
    + "0064000a"
    + "ffffff00"
    + "b4f0"
    + "01020304050607"
    + "000003"
)
# 2-bit status vector: small, large (+256 ms), lost, large negative (-2 ms), small; no padding.
VECTOR_2BIT = bytes.fromhex(
    "8fcd0006"
    + "11111111"
    + "22222222"
    + "12340005"
    + "000001ff"
    + "d890"
    + "10"
    + "0400"
    + "fff8"
    + "02"
)


def test_parse_run_length_chunk_across_wrap() -> None:
    fb = TwccFeedback.parse(RUN_LENGTH)
    assert (fb.sender_ssrc, fb.media_ssrc) == (0x11111111, 0x22222222)
    assert (fb.base_seq, fb.reference_time, fb.fb_count) == (0xFFFE, 16, 7)
    assert fb.statuses == [SMALL_DELTA] * 4
    assert fb.deltas == [4, 0, 255, 1]
    assert fb.arrivals() == [
        (0xFFFE, 1_025_000),
        (0xFFFF, 1_025_000),
        (0x0000, 1_088_750),
        (0x0001, 1_089_000),
    ]
    assert fb.serialize() == RUN_LENGTH


def test_parse_one_bit_vector_and_signed_reference_time() -> None:
    fb = TwccFeedback.parse(VECTOR_1BIT)
    assert fb.base_seq == 100 and fb.fb_count == 0
    assert fb.statuses == [1, 1, 0, 1, 0, 0, 1, 1, 1, 1]
    assert fb.deltas == [1, 2, 3, 4, 5, 6, 7]
    arrivals = fb.arrivals()
    assert arrivals[0] == (100, -64_000 + 250)
    assert arrivals[2] == (102, None)
    assert arrivals[-1] == (109, -64_000 + 250 * 28)
    assert fb.serialize() == VECTOR_1BIT


def test_parse_two_bit_vector_large_and_negative_deltas() -> None:
    fb = TwccFeedback.parse(VECTOR_2BIT)
    assert fb.statuses == [SMALL_DELTA, LARGE_DELTA, NOT_RECEIVED, LARGE_DELTA, SMALL_DELTA]
    assert fb.deltas == [16, 1024, -8, 2]
    assert fb.fb_count == 0xFF
    assert fb.arrivals() == [
        (0x1234, 68_000),
        (0x1235, 324_000),
        (0x1236, None),
        (0x1237, 322_000),
        (0x1238, 322_500),
    ]
    assert fb.serialize() == VECTOR_2BIT


def test_zero_padding_without_p_bit_is_accepted() -> None:
    unpadded = bytes([VECTOR_1BIT[0] & ~0x20]) + VECTOR_1BIT[1:-1] + b"\x00"
    assert TwccFeedback.parse(unpadded) == TwccFeedback.parse(VECTOR_1BIT)


def test_rtcp_parser_hands_back_feedback_as_unknown() -> None:
    compound = VECTOR_2BIT + RUN_LENGTH
    parts = parse_compound(compound)
    assert [type(p) for p in parts] == [UnknownRtcp, UnknownRtcp]
    assert (parts[0].packet_type, parts[0].fmt) == (205, 15)
    assert TwccFeedback.parse(parts[1].data).base_seq == 0xFFFE


@pytest.mark.parametrize(
    "data",
    [
        VECTOR_2BIT[:19],  # shorter than the fixed part
        VECTOR_2BIT[:-4],  # length field exceeds data
        VECTOR_2BIT[:2] + b"\x00\x04" + VECTOR_2BIT[4:20],  # chunks cut off
        VECTOR_2BIT[:2] + b"\x00\x05" + VECTOR_2BIT[4:24],  # deltas cut off
        VECTOR_2BIT[:20] + b"\xff\xff" + VECTOR_2BIT[22:],  # reserved 2-bit symbol 3
        VECTOR_2BIT[:20] + b"\x60\x05" + VECTOR_2BIT[22:],  # run length of symbol 3
        bytes([0x8F, 206]) + VECTOR_2BIT[2:],  # PSFB, not RTPFB
        bytes([0x81]) + VECTOR_2BIT[1:],  # FMT 1 (NACK)
        bytes([0xAF]) + VECTOR_2BIT[1:-1] + b"\x09",  # padding count beyond packet
    ],
)
def test_malformed_input_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        TwccFeedback.parse(data)


def _random_statuses(rng: random.Random, n: int) -> tuple[list[int], list[int]]:
    statuses, deltas = [], []
    mode = 0
    for _ in range(n):
        if rng.random() < 0.1:
            mode = rng.randrange(4)
        if mode == 0:  # long runs of small deltas
            statuses.append(SMALL_DELTA)
            deltas.append(rng.randrange(256))
        elif mode == 1:  # a burst of losses
            statuses.append(NOT_RECEIVED)
        elif mode == 2:  # mixed small / lost (1-bit vectors)
            if rng.random() < 0.3:
                statuses.append(NOT_RECEIVED)
            else:
                statuses.append(SMALL_DELTA)
                deltas.append(rng.randrange(256))
        else:  # large and negative deltas (2-bit vectors)
            s = rng.choice((NOT_RECEIVED, SMALL_DELTA, LARGE_DELTA))
            statuses.append(s)
            if s == SMALL_DELTA:
                deltas.append(rng.randrange(256))
            elif s == LARGE_DELTA:
                deltas.append(rng.choice((-32768, -1, 256, 32767, rng.randrange(-5000, 5000))))
    return statuses, deltas


def test_build_parse_round_trip_random_mixes() -> None:
    rng = random.Random(7)
    for n in (1, 2, 7, 13, 14, 15, 100, 8191, 8200, 20000):
        statuses, deltas = _random_statuses(rng, n)
        fb = TwccFeedback(1, 2, rng.randrange(65536), rng.randrange(1 << 24), n & 0xFF)
        fb.statuses, fb.deltas = statuses, deltas
        data = fb.serialize()
        assert len(data) % 4 == 0
        assert TwccFeedback.parse(data) == fb


def test_long_runs_use_run_length_chunks() -> None:
    fb = TwccFeedback(1, 2, 0, 0, 0, [NOT_RECEIVED] * 8000 + [SMALL_DELTA], [3])
    data = fb.serialize()
    assert len(data) == 20 + 2 + 2 + 1 + 3  # two chunks, one delta, padding
    assert TwccFeedback.parse(data) == fb


def test_serialize_rejects_inconsistent_feedback() -> None:
    with pytest.raises(ValueError):
        TwccFeedback(1, 2, 0, 0, 0, [SMALL_DELTA], []).serialize()
    with pytest.raises(ValueError):
        TwccFeedback(1, 2, 0, 0, 0, [SMALL_DELTA], [256]).serialize()
    with pytest.raises(ValueError):
        TwccFeedback(1, 2, 0, 0, 0, [LARGE_DELTA], [40000]).serialize()


def test_from_arrivals_quantises_without_drift() -> None:
    arrivals = [1_000_123, None, 1_000_500, 1_070_000, 1_069_000, 1_069_999]
    fb = TwccFeedback.from_arrivals(5, 6, 65535, arrivals, fb_count=3)
    assert fb.reference_time == 15  # 15 * 64 ms = 960 ms <= first arrival
    assert fb.statuses == [SMALL_DELTA, NOT_RECEIVED, SMALL_DELTA, LARGE_DELTA, LARGE_DELTA, 1]
    parsed = TwccFeedback.parse(fb.serialize())
    got = [a for _, a in parsed.arrivals()]
    expect = [None if a is None else a // 250 * 250 for a in arrivals]
    assert got == expect


def test_sequencer_joins_feedback_across_wrap_with_loss_and_reordering() -> None:
    seqr = TransportSequencer(history=256, start_seq=65530)
    stamped = [seqr.next_seq(1000 + i, now=10.0 + i * 0.01) for i in range(12)]
    assert stamped == [65530, 65531, 65532, 65533, 65534, 65535, 0, 1, 2, 3, 4, 5]
    # packet 3 lost; packets 5 and 6 arrive swapped
    arrivals: list[int | None] = [100_000 + i * 10_000 for i in range(12)]
    arrivals[3] = None
    arrivals[5], arrivals[6] = arrivals[6], arrivals[5]
    fb = TwccFeedback.from_arrivals(1, 2, 65530, arrivals)
    results = seqr.on_feedback(fb.serialize())
    assert [r.seq for r in results] == list(range(65530, 65542))
    assert results[3].arrival_time is None and results[3].size == 1003
    assert results[5].arrival_time == pytest.approx(0.16)
    assert results[6].arrival_time == pytest.approx(0.15)
    assert results[11].send_time == pytest.approx(10.11)
    assert all(r.cluster == -1 for r in results)


def test_sequencer_reports_each_packet_once_and_late_arrivals() -> None:
    seqr = TransportSequencer(history=64)
    for i in range(4):
        seqr.next_seq(500, now=i * 0.005, cluster=7 if i >= 2 else -1)
    first = seqr.on_feedback(TwccFeedback.from_arrivals(1, 2, 0, [0, None, 10_000]))
    assert [(r.seq, r.arrival_time is None) for r in first] == [(0, False), (1, True), (2, False)]
    # the next feedback repeats 0..2 (1 now arrived late) and adds 3
    second = seqr.on_feedback(
        TwccFeedback.from_arrivals(1, 2, 0, [0, 12_000, 10_000, 20_000], fb_count=1)
    )
    assert [r.seq for r in second] == [1, 3]
    assert second[0].arrival_time == pytest.approx(0.012)
    assert second[1].cluster == 7
    # a repeated loss report for an already received packet is ignored
    repeat = TwccFeedback(1, 2, 1, 0, 2, [NOT_RECEIVED, NOT_RECEIVED], [])
    assert seqr.on_feedback(repeat) == []
    assert seqr.feedback_gaps == 0


def test_sequencer_ignores_unknown_and_too_old_packets() -> None:
    seqr = TransportSequencer(history=64)
    for i in range(200):
        seqr.next_seq(100, now=i * 0.001)
    # 0..135 fell out of the 64-packet ring; 300 was never sent
    assert seqr.on_feedback(TwccFeedback.from_arrivals(1, 2, 10, [0, 250])) == []
    assert seqr.on_feedback(TwccFeedback.from_arrivals(1, 2, 300, [0])) == []
    assert len(seqr.on_feedback(TwccFeedback.from_arrivals(1, 2, 190, [0] * 10))) == 10


def test_sequencer_unwraps_reference_time_and_counts_feedback_gaps() -> None:
    seqr = TransportSequencer(history=64)
    for i in range(3):
        seqr.next_seq(100, now=float(i))
    a = TwccFeedback(1, 2, 0, 0xFFFFFF, 250, [SMALL_DELTA], [4])  # -64 ms + 1 ms
    b = TwccFeedback(1, 2, 1, 0x000001, 253, [SMALL_DELTA], [4])  # +64 ms + 1 ms
    c = TwccFeedback(1, 2, 2, 0x7FFFFF + 3, 0, [SMALL_DELTA], [0])  # jump past half the range
    ra, rb, rc = (seqr.on_feedback(x)[0] for x in (a, b, c))
    assert rb.arrival_time - ra.arrival_time == pytest.approx(0.128)
    assert rc.arrival_time > rb.arrival_time - 1e6  # unwrapped as a step, not garbage
    assert seqr.feedback_gaps == 2 + 2  # 251, 252 missing; 254, 255 missing


def test_mark_sent_updates_send_time() -> None:
    seqr = TransportSequencer(history=64)
    seq = seqr.next_seq(1200, now=1.0)
    seqr.mark_sent(seq, now=1.25)
    (r,) = seqr.on_feedback(TwccFeedback.from_arrivals(1, 2, seq, [5_000]))
    assert r.send_time == 1.25 and r.size == 1200


def test_recorder_to_sequencer_end_to_end() -> None:
    """Receive side feedback reproduces each arrival (to 250 us), loss and late packets."""
    rng = random.Random(3)
    seqr = TransportSequencer(history=1024, start_seq=65000)
    rec = TwccRecorder(sender_ssrc=9, media_ssrc=10, max_status=300)
    truth: dict[int, float | None] = {}
    results = []
    now_us = 5_000_000
    delayed: list[tuple[int, int]] = []
    for i in range(2000):
        now_us += 2_000
        if i == 1000:
            now_us += 20_000_000  # a 20 s pause: receive deltas beyond 16 bits must split
        seq = seqr.next_seq(1200, now=now_us / 1e6)
        ext = seqr.last_seq
        roll = rng.random()
        if roll < 0.05:
            truth[ext] = None
        elif roll < 0.08:
            delayed.append((seq, ext))  # arrives 3 packets later (reordered)
            truth[ext] = None
        else:
            arrival = now_us + 40_000
            rec.on_packet(seq, arrival)
            truth[ext] = arrival // 250 * 250 / 1e6
        while delayed and i % 3 == 0:
            dseq, dext = delayed.pop(0)
            arrival = now_us + 41_000
            rec.on_packet(dseq, arrival)
            truth[dext] = arrival // 250 * 250 / 1e6
        if i % 25 == 24:
            for packet in rec.build():
                results += seqr.on_feedback(TwccFeedback.parse(packet))
    for packet in rec.build():
        results += seqr.on_feedback(packet)
    final: dict[int, float | None] = {}
    for r in results:
        if r.arrival_time is not None or r.seq not in final:
            final[r.seq] = r.arrival_time
    assert set(final) <= set(truth)
    received = {s: t for s, t in truth.items() if t is not None}
    assert {s: final[s] for s in received} == pytest.approx(received)
    last_received = max(received)
    lost = {s for s, t in truth.items() if t is None and s < last_received}
    assert {s for s, t in final.items() if t is None} == lost
    assert seqr.feedback_gaps == 0


# -- amplification: a few bytes claiming tens of thousands of statuses (issue 12, item 4) --------


def twcc_bomb(base_seq: int = 0, symbol: int = NOT_RECEIVED, count: int = 0xFFFF) -> bytes:
    """40 bytes claiming `count` statuses: nine run length chunks of 8191 of one symbol."""
    chunks = b"".join(((symbol << 13) | 8191).to_bytes(2, "big") for _ in range(9))
    body = base_seq.to_bytes(2, "big") + count.to_bytes(2, "big") + bytes(4) + chunks + bytes(2)
    return bytes([0x8F, 205]) + ((12 + len(body)) // 4 - 1).to_bytes(2, "big") + bytes(8) + body


def test_bomb_parses_into_runs_bounded_by_its_length() -> None:
    bomb = twcc_bomb()
    assert len(bomb) == 40
    fb = TwccFeedback.parse(bomb)
    assert len(fb.statuses) == 0xFFFF  # what it claims...
    assert fb.statuses.runs == [(NOT_RECEIVED, 0xFFFF)]  # ...kept as one run
    assert fb.deltas == []
    assert fb.statuses[0] == fb.statuses[-1] == NOT_RECEIVED
    # received statuses each need a delta byte: claiming many without them is malformed
    with pytest.raises(ValueError, match="deltas truncated"):
        TwccFeedback.parse(twcc_bomb(symbol=SMALL_DELTA))
    # mixed vectors and runs: runs grow with the chunks, not with the counts they claim
    chunks = [0x1FFF, 0xA000] * 7  # lost x 8191, then a 1-bit vector (1 received, 13 lost)
    fb = TwccFeedback(1, 2, 0, 0, 0)
    body = b"".join(c.to_bytes(2, "big") for c in chunks) + bytes([4] * 7) + bytes(1)
    count = (8191 + 14) * 7
    data = bytearray(fb.serialize()[:20]) + body
    data[2:4] = (len(data) // 4 - 1).to_bytes(2, "big")
    data[14:16] = count.to_bytes(2, "big")
    parsed = TwccFeedback.parse(bytes(data))
    assert len(parsed.statuses) == count
    assert len(parsed.statuses.runs) <= len(data) // 2
    assert parsed.deltas == [4] * 7


def test_status_runs_read_like_the_list() -> None:
    statuses = [0, 0, 1, 2, 2, 2, 0, 1]
    runs = TwccFeedback.parse(
        TwccFeedback(1, 2, 0, 0, 0, statuses, [1, 300, -2, 7, 9]).serialize()
    ).statuses
    assert runs == statuses and statuses == runs and list(runs) == statuses
    assert [runs[i] for i in range(-len(statuses), len(statuses))] == statuses * 2
    assert runs[2:5] == statuses[2:5]
    assert runs != statuses[:-1] and runs != [*statuses[:-1], 0]
    with pytest.raises(IndexError):
        runs[len(statuses)]


def test_sequencer_bomb_costs_at_most_the_packets_sent() -> None:
    """The bomb's results are bounded by what was sent; repeating it yields nothing."""
    seqr = TransportSequencer(history=4096, start_seq=65500)
    for i in range(100):
        seqr.next_seq(1000, now=i * 0.001)
    bomb = twcc_bomb(base_seq=65400)  # covers the 100 sent packets and 65435 never sent
    first = seqr.on_feedback(bomb)
    assert [r.seq for r in first] == list(range(65500, 65600))
    assert all(r.arrival_time is None for r in first)
    for _ in range(50):
        assert seqr.on_feedback(bomb) == []
    # the packets can still be reported received (once) by honest feedback
    honest = TwccFeedback.from_arrivals(1, 2, 65500 & 0xFFFF, [1000 * i for i in range(100)])
    assert len(seqr.on_feedback(honest)) == 100
    assert seqr.on_feedback(honest) == []
    # a bomb over a full ring: at most one result per remembered packet, then nothing
    seqr = TransportSequencer(history=256)
    for i in range(10_000):
        seqr.next_seq(1000, now=i * 0.001)
    results = seqr.on_feedback(twcc_bomb(base_seq=0))
    assert len(results) == 256 and results[0].seq == 10_000 - 256
    assert seqr.on_feedback(twcc_bomb(base_seq=0)) == []
    assert seqr.on_feedback(twcc_bomb(base_seq=20_000)) == []  # never sent


class CountingRuns(StatusRuns):
    """Statuses that count how many symbols a reader takes one by one."""

    taken = 0

    def __iter__(self):
        for symbol in super().__iter__():
            CountingRuns.taken += 1
            yield symbol

    def __getitem__(self, index):
        CountingRuns.taken += 1
        return super().__getitem__(index)


def test_sequencer_walks_runs_not_the_statuses_they_claim() -> None:
    seqr = TransportSequencer(history=4096)
    for i in range(4096):
        seqr.next_seq(1000, now=i * 0.001)
    fb = TwccFeedback.parse(twcc_bomb(base_seq=0))
    fb.statuses = CountingRuns(fb.statuses.runs)
    CountingRuns.taken = 0
    for _ in range(3):
        seqr.on_feedback(fb)
    assert CountingRuns.taken == 0


def test_sequencer_skips_received_runs_outside_the_ring_but_keeps_their_clock() -> None:
    seqr = TransportSequencer(history=64)
    for i in range(300):
        seqr.next_seq(100, now=i * 0.001)
    # 200..299 in one feedback: 200..235 fell out of the ring, their deltas still count
    fb = TwccFeedback.from_arrivals(1, 2, 200, [1000 * i for i in range(100)])
    results = seqr.on_feedback(fb)
    assert [r.seq for r in results] == list(range(236, 300))
    assert results[0].arrival_time == pytest.approx(0.036)


def test_recorder_bounds_the_span_a_jumping_sender_makes_it_report() -> None:
    rec = TwccRecorder(max_status=2000, max_span=4096)
    seq = 0
    for i in range(200):  # each packet jumps ~30000 ahead: 6 million numbers in all
        rec.on_packet(seq & 0xFFFF, 1_000_000 + i * 1000)
        seq += 30_000
    packets = rec.build()
    assert 1 <= len(packets) <= 3
    statuses = sum(len(TwccFeedback.parse(p).statuses) for p in packets)
    assert statuses <= 4096
    assert len(rec._arrivals) <= 200
    rec.on_packet(seq & 0xFFFF, 2_000_000)
    packets = rec.build()
    assert 1 <= len(packets) <= 3
    assert TwccFeedback.parse(packets[-1]).statuses[-1] == SMALL_DELTA


def test_recorder_reports_a_long_loss_run_without_failing() -> None:
    """More losses in a row than one packet holds (max_status) used to raise IndexError."""
    rec = TwccRecorder(max_status=100)
    rec.on_packet(0, 1_000_000)
    rec.on_packet(250, 1_100_000)
    packets = [TwccFeedback.parse(p) for p in rec.build()]
    assert sum(len(p.statuses) for p in packets) == 251
    assert [s for p in packets for s in p.statuses].count(NOT_RECEIVED) == 249
