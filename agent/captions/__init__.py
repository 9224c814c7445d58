"""Live translated captions: the host's speech, transcribed and translated, to every viewer in
the language they asked for (issue 6). Entry points: `job.run_captions_job` (one room), and
`job.create_captions_job` / `job.prepare_captions` (the agent worker's "captions" job kind).

Only the settings are imported eagerly, so agent/config.py can hold a `captions` table without
an import cycle; the rest loads on first use.
"""

from __future__ import annotations

from typing import Any

from .config import CaptionSettings, caption_settings

__all__ = [
    "CaptionModels",
    "CaptionSettings",
    "caption_settings",
    "load_models",
    "run_captions_job",
]


def __getattr__(name: str) -> Any:
    if name in ("CaptionModels", "load_models", "run_captions_job"):
        from . import job

        return getattr(job, name)
    raise AttributeError(name)
