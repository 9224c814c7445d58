"""The weak-link lab: profiles as data, and a real lab measured with UDP (needs root)."""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks import netlab
from benchmarks.netlab import (
    PROFILES,
    LabError,
    LinkParams,
    NetLab,
    Profile,
    check_phase,
    measure_phase,
)


def test_profiles_are_documented_data() -> None:
    assert set(PROFILES) >= {"clean", "cross-border", "mobile-3g", "drop-recover"}
    for profile in PROFILES.values():
        assert profile.description and profile.phases[0][0] == 0.0
    cross = PROFILES["cross-border"].params_at(5)
    assert (cross.rtt_ms, cross.down_loss_pct, cross.down_kbps) == (250, 2, 1500)
    mobile = PROFILES["mobile-3g"].params_at(5)
    assert (mobile.rtt_ms, mobile.down_jitter_ms, mobile.down_loss_pct) == (300, 50, 3)
    assert (mobile.down_kbps, mobile.up_kbps) == (1000, 1000)
    drop = PROFILES["drop-recover"]
    assert [drop.params_at(t).down_kbps for t in (0, 9.9, 10, 29.9, 30, 60)] == [
        3000,
        3000,
        300,
        300,
        3000,
        3000,
    ]
    assert drop.capacity_timeline() == [(0.0, 3000), (10.0, 300), (30.0, 3000)]
    with pytest.raises(ValueError):
        netlab.get_profile("no-such-profile")


def test_jitter_wander_stays_in_bounds_and_keeps_order() -> None:
    wander = netlab._Wander(random.Random(1))
    wander.set(150, 50)
    releases = []
    delays = []
    t = 0.0
    while t < 20.0:
        d = wander.delay(t)
        delays.append(d)
        releases.append(t + d)
        t += 0.001
    assert 0.1 - 1e-9 <= min(delays) and max(delays) <= 0.2 + 1e-9
    assert min(delays) < 0.11 and max(delays) > 0.19  # it does use the range
    assert abs(sum(delays) / len(delays) - 0.15) < 0.01
    assert all(b >= a - 1e-9 for a, b in zip(releases, releases[1:], strict=False))


def test_lab_without_root_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netlab.os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root"):
        NetLab("clean").start()


@pytest.mark.netns
def test_lab_matches_its_profile_and_cleans_up(tmp_path: Path) -> None:
    first = LinkParams(
        down_kbps=2000,
        up_kbps=1000,
        down_delay_ms=30,
        up_delay_ms=20,
        down_loss_pct=5,
    )
    second = LinkParams(down_kbps=600, down_delay_ms=40, up_delay_ms=20, down_jitter_ms=20)
    profile = Profile("test", "two phases", ((0.0, first), (7.0, second)), 12.0)
    started = time.monotonic()
    with NetLab(profile, server_netns=True) as lab:
        run_id = lab.run_id
        ip_in_client = lab.wrapper_script("client", "ip", str(tmp_path / "ip-client"))
        routes = subprocess.run([ip_in_client, "-4", "route"], capture_output=True, text=True)
        assert lab.client_ip in routes.stdout
        assert "default" not in routes.stdout  # nothing in the lab can reach outside it
        lab.start_schedule()
        measured = measure_phase(lab, first, seconds=1.5)
        down, rate = measured["down"], measured["rate"]
        assert 2.0 <= down.loss_pct <= 9.0
        assert 29 <= down.delay_pct(50) <= 35
        assert measured["up"].loss_pct <= 1.0 and 19 <= measured["up"].delay_pct(50) <= 25
        assert 0.9 * 1976 <= rate.recv_kbps <= 1.08 * 1976
        assert check_phase(first, measured) == []
        while lab.elapsed() < 7.3:  # the schedule switches to the second phase at 7 s
            time.sleep(0.05)
        assert lab.params == second
        measured = measure_phase(lab, second, seconds=1.5)
        down, rate = measured["down"], measured["rate"]
        assert down.loss_pct <= 1.0 and down.reordered == 0
        assert 19 <= down.delay_pct(5) and down.delay_pct(95) <= 65
        assert down.delay_pct(95) - down.delay_pct(5) >= 10  # jitter is there
        assert 0.9 * 593 <= rate.recv_kbps <= 1.08 * 593
        assert check_phase(second, measured) == []
        relay = lab._relay
    assert relay is not None and relay.poll() is not None
    assert netlab.lab_leftovers(run_id) == []
    assert time.monotonic() - started < 30
