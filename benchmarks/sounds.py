"""Non-speech sounds a buyer's microphone picks up, made offline with numpy (seeded, so every
run hears the same): what must never start a turn or stop the agent."""

from __future__ import annotations

import numpy as np

RATE = 16000


def _int16(x: np.ndarray, peak: float) -> np.ndarray:
    x = x / max(1e-9, float(np.max(np.abs(x))))
    return (x * peak * 32767).astype(np.int16)


def tone(freq: float = 440.0, seconds: float = 2.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return _int16(np.sin(2 * np.pi * freq * t), 0.3)


def beeps(
    freq: float = 1000.0,
    on_s: float = 0.15,
    period_s: float = 0.5,
    seconds: float = 3.0,
    rate: int = RATE,
) -> np.ndarray:
    """A beep every `period_s`, like a test signal or Chromium's fake microphone."""
    t = np.arange(int(seconds * rate)) / rate
    gate = (t % period_s) < on_s
    return _int16(np.sin(2 * np.pi * freq * t) * gate, 0.4)


def buzz(freq: float = 200.0, seconds: float = 2.0, rate: int = RATE) -> np.ndarray:
    """A square-ish wave with many harmonics (a buzzer, a ringtone)."""
    t = np.arange(int(seconds * rate)) / rate
    return _int16(np.tanh(6 * np.sin(2 * np.pi * freq * t)), 0.3)


def music(seconds: float = 4.0, rate: int = RATE, seed: int = 5) -> np.ndarray:
    """Background music: chords of harmonic notes with vibrato, plucked envelopes, a drum."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n)
    beat = int(0.5 * rate)
    chords = [
        (261.6, 329.6, 392.0),
        (220.0, 261.6, 329.6),
        (174.6, 220.0, 261.6),
        (196.0, 246.9, 293.7),
    ]
    for i, start in enumerate(range(0, n, beat)):
        m = min(beat, n - start)
        t = np.arange(m) / rate
        env = np.exp(-3.0 * t)
        for f in chords[(i // 2) % len(chords)]:
            vib = 1 + 0.004 * np.sin(2 * np.pi * 5.5 * t)
            for h, a in ((1, 1.0), (2, 0.5), (3, 0.3), (4, 0.15)):
                out[start : start + m] += a * env * np.sin(2 * np.pi * f * h * vib * t)
        kick = min(int(0.08 * rate), m)
        out[start : start + kick] += 2.0 * rng.normal(0, 1, kick) * np.exp(-np.linspace(0, 8, kick))
    return _int16(out, 0.35)


def keyboard(seconds: float = 3.0, rate: int = RATE, seed: int = 7) -> np.ndarray:
    """Typing: short decaying clicks 80-250 ms apart."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n)
    at = int(0.1 * rate)
    while at < n:
        m = min(int(0.008 * rate), n - at)
        out[at : at + m] += (
            rng.normal(0, 1, m) * np.exp(-np.linspace(0, 6, m)) * rng.uniform(0.5, 1)
        )
        at += int(rng.uniform(0.08, 0.25) * rate)
    return _int16(out, 0.6)


def cough(rate: int = RATE, seed: int = 9) -> np.ndarray:
    """Two cough-like bursts: band-limited noise with a sharp attack and a ~250 ms decay."""
    rng = np.random.default_rng(seed)
    parts = []
    for length in (0.28, 0.22):
        m = int(length * rate)
        noise = rng.normal(0, 1, m)
        spectrum = np.fft.rfft(noise)
        freqs = np.fft.rfftfreq(m, 1 / rate)
        spectrum *= np.exp(-(((freqs - 900) / 700) ** 2))  # energy around 0.3-1.6 kHz
        burst = np.fft.irfft(spectrum, m)
        env = np.minimum(1, np.arange(m) / (0.01 * rate)) * np.exp(-np.linspace(0, 4, m))
        parts += [burst * env, np.zeros(int(0.15 * rate))]
    return _int16(np.concatenate(parts), 0.7)


def noises(rate: int = RATE) -> dict[str, np.ndarray]:
    """Every sound above, by name."""
    return {
        "tone_440": tone(440, rate=rate),
        "beeps_1k": beeps(rate=rate),
        "buzz_200": buzz(rate=rate),
        "music": music(rate=rate),
        "keyboard": keyboard(rate=rate),
        "cough": cough(rate=rate),
    }
