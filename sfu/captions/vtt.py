"""Caption formats: WebVTT and the text of an entry in a wanted language."""

from __future__ import annotations

from typing import Any


def caption_in(entry: dict[str, Any], lang: str | None) -> tuple[str, bool]:
    """The entry's text in `lang` (None: the source) and whether it had to stay untranslated."""
    if not lang or lang == entry["lang"]:
        return entry["text"], False
    translated = entry["translations"].get(lang)
    return (translated, False) if translated else (entry["text"], True)


def vtt_time(seconds: float) -> str:
    millis = max(0, round(seconds * 1000))
    h, rest = divmod(millis, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def _vtt_text(text: str) -> str:
    text = " ".join(text.split())  # no blank lines (they end a cue) and no stray newlines
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("-->", "--&gt;")


def to_vtt(
    captions: list[dict[str, Any]], started_at: float, lang: str | None, title: str = ""
) -> str:
    """WebVTT of the captions, times from `started_at`; cues never overlap backwards."""
    header = "WEBVTT" + (f" - {title}" if title else "")
    lines = [header, ""]
    untranslated_any = False
    cues: list[str] = []
    for i, entry in enumerate(captions, 1):
        start = max(0.0, entry["start"] - started_at)
        end = max(start + 0.5, entry["end"] - started_at)
        text, untranslated = caption_in(entry, lang)
        body = _vtt_text(text)
        if untranslated:
            untranslated_any = True
            body = f"<c.untranslated>{body}</c>"
        cues += [str(i), f"{vtt_time(start)} --> {vtt_time(end)}", body, ""]
    if untranslated_any:
        lines += [
            f"NOTE cues marked untranslated stay in the spoken language: no offline model "
            f"translates them into {lang}",
            "",
        ]
    return "\n".join(lines + cues)
