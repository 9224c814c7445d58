"""MediaPeer's SRTP protection without pylibsrtp's per-call overhead: the same bytes, the same
refusals, and pylibsrtp's own path when its internals are not there."""

from __future__ import annotations

import os
import struct

import pylibsrtp
import pytest
from pylibsrtp import Policy, Session

from sfu.media.peer import srtp_protector

KEY = os.urandom(30)


def session() -> Session:
    policy = Policy(
        key=KEY,
        ssrc_type=Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    )
    return Session(policy=policy)


def rtp(seq: int, size: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, 0x1234) + os.urandom(size)


def test_same_bytes_as_pylibsrtp() -> None:
    reference, ours = session(), session()
    protect = srtp_protector(ours)
    assert protect is not ours.protect  # (the fast path is in use)
    for seq, size in enumerate([0, 1, 100, 1100, 1200, 3, 800] * 20):
        packet = rtp(seq, size)
        assert protect(packet) == reference.protect(packet)
    # and a receiver with the same key reads it back
    receiver = Session(
        policy=Policy(
            key=KEY,
            ssrc_type=Policy.SSRC_ANY_INBOUND,
            srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
        )
    )
    packet = rtp(1000, 500)
    assert receiver.unprotect(protect(packet)) == packet


def test_refusals_are_pylibsrtps() -> None:
    ours, reference = session(), session()
    protect = srtp_protector(ours)
    with pytest.raises(ValueError, match="too long"):
        protect(rtp(1, 1500))
    with pytest.raises(ValueError, match="too long"):
        reference.protect(rtp(1, 1500))
    packet = rtp(7, 100)
    protect(packet)
    with pytest.raises(pylibsrtp.Error):  # the same packet again: libsrtp's replay check
        protect(packet)


def test_falls_back_without_pylibsrtps_internals() -> None:
    class Other:
        def protect(self, data: bytes) -> bytes:
            return data

    other = Other()
    assert srtp_protector(other).__self__ is other  # type: ignore[arg-type, attr-defined]
