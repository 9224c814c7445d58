"""Inputs replayed by every run: tests/fuzz/corpus/<target>/<name>.

Inputs that once broke something (the transport-cc bombs, the RTP extension element that
raised IndexError), and a few edge cases and seeds worth keeping. Files are raw bytes (RTP,
RTCP, payloads) or UTF-8 text (SDP, signalling messages, tokens); each name says what it is.
Add one with every parser fix a fuzzer led to.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).parent / "corpus"


def corpus(target: str) -> list:
    """pytest params (the file's bytes, id = file name) for one target's corpus."""
    files = sorted((ROOT / target).glob("*"))
    assert files, f"the {target} corpus is empty: {ROOT / target}"
    return [pytest.param(f.read_bytes(), id=f.name) for f in files]
