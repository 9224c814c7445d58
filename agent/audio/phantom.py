"""Phantom transcripts: words Whisper writes where nobody said anything.

Fed noise, music or a cough that got past the VAD, Whisper base does not answer "nothing": it
writes the subtitle credits and pleasantries it saw most in training ("Thank you.", "Obrigado.",
"Subtítulos realizados por la comunidad de Amara.org") or a random sentence it is unsure of.
A transcript is a phantom when Whisper itself doubts it (its segment signals: no-speech
probability with a low average log-probability, as faster-whisper's own rule; a very low
log-probability; a repetitive, highly compressible text) or when it is one of those known lines.
Such a turn is not answered, not shown, and does not interrupt the agent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..answer.text import normalize
from .stt import Transcript

# Whisper's own rule (faster-whisper's defaults): a segment that is probably not speech and
# decoded without confidence is silence
NO_SPEECH_PROB = 0.6
NO_SPEECH_LOGPROB = -1.0
# below this, whatever Whisper wrote is a guess (real buyer speech here: -0.1 to -0.9; keyboard
# typing and a cough came out as sentences at -1.9 and -2.3)
MIN_LOGPROB = -1.5
# "uh uh uh uh uh ..." and "ooooo...": Whisper's loops on tones and hums (gzip ratio; speech
# is ~0.4-1.0 here, faster-whisper's own limit is 2.4)
MAX_COMPRESSION_RATIO = 2.4

# Known hallucinations (normalised: lower case, no accents or punctuation), whole transcripts
KNOWN_PHANTOMS = frozenset(
    {
        # en
        "thank you",
        "thank you very much",
        "thanks for watching",
        "thank you for watching",
        "thank you so much for watching",
        "please subscribe",
        "subscribe to my channel",
        "i'm gonna get you",
        "i m gonna get you",
        "you",
        "bye",
        "i",
        "oh",
        "so",
        "the end",
        # pt
        "obrigado",
        "obrigada",
        "obrigado por assistir",
        "tchau",
        "inscreva se no canal",
        # es
        "gracias",
        "gracias por ver",
        "gracias por ver el video",
        "muchas gracias",
        "adios",
        "suscribete",
    }
)
# credit lines Whisper copies from subtitle files, in any language
_CREDITS = re.compile(
    r"^(subtitles|subtitulos|subtitulado|legendas|legendado|sous titres|untertitel)\b|amara org"
)


@dataclass(frozen=True)
class Verdict:
    phantom: bool
    reason: str = ""  # empty | no_speech | unsure | repetitive | known_phrase


def judge(transcript: Transcript) -> Verdict:
    """Is this transcript a phantom, and why."""
    text = normalize(transcript.text)
    if not re.search(r"\w", text):
        return Verdict(True, "empty")
    if transcript.compression_ratio > MAX_COMPRESSION_RATIO:
        return Verdict(True, "repetitive")
    if transcript.avg_logprob < MIN_LOGPROB:
        return Verdict(True, "unsure")
    if transcript.no_speech_prob > NO_SPEECH_PROB and transcript.avg_logprob < NO_SPEECH_LOGPROB:
        return Verdict(True, "no_speech")
    if is_known_phantom(transcript.text):
        return Verdict(True, "known_phrase")
    return Verdict(False)


def is_known_phantom(text: str) -> bool:
    """One of the lines Whisper writes over noise, or a subtitle credit."""
    norm = normalize(text).replace("-", " ").strip()
    return norm in KNOWN_PHANTOMS or _CREDITS.search(norm) is not None
