"""How long each fuzz test runs: a short fixed budget by default, a long one on request.

* Default (`pytest`, `make test`): every fuzz test runs `examples` inputs, derandomized (the
  same inputs each run, so CI is reproducible); the whole tests/fuzz set takes ~20 s.
* Long (`make fuzz`, i.e. `pytest -m fuzz tests/fuzz`, or SFU_FUZZ_BUDGET=long): LONG_FACTOR
  times as many inputs, fresh random ones each run; ~2 minutes in all.

SFU_FUZZ_BUDGET=short|long overrides the choice either way. A failure prints the
`@reproduce_failure` blob (and the input); add the input to tests/fuzz/corpus/ with the fix.
Every input gets a deadline (DEADLINE_MS): generous, so load on a CI machine does not trip it,
but a parser that loops or goes quadratic does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings

LONG_FACTOR = 6
DEADLINE_MS = 2000

_long = os.environ.get("SFU_FUZZ_BUDGET", "") == "long"


def choose(markexpr: str) -> None:
    """Called from conftest with pytest's -m expression: `-m fuzz` asks for the long budget."""
    global _long
    env = os.environ.get("SFU_FUZZ_BUDGET", "")
    if env in ("short", "long"):
        _long = env == "long"
    else:
        _long = re.fullmatch(r"\s*fuzz\s*", markexpr or "") is not None


def is_long() -> bool:
    return _long


def fuzz(examples: int = 200) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Hypothesis settings for one fuzz test: `examples` inputs (times LONG_FACTOR if long)."""
    long = _long
    return settings(
        max_examples=examples * LONG_FACTOR if long else examples,
        deadline=timedelta(milliseconds=DEADLINE_MS),
        derandomize=not long,
        database=None,  # nothing written to the work tree; failures print a reproduce blob
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
