"""The old import path of the caption archive, kept for code written against it.

The archive now lives in sfu/captions/ (store.py: SQLite; vtt.py: formats; launcher.py: the
demo captioner) and its routes in sfu/api/captions.py.
"""

from .api.captions import ARCHIVE_KEY, LAUNCHER_KEY, add_routes
from .captions.launcher import CaptionsLauncher, DemoLauncher, SubprocessLauncher
from .captions.store import CaptionArchive
from .captions.vtt import caption_in, to_vtt, vtt_time

__all__ = [
    "ARCHIVE_KEY",
    "LAUNCHER_KEY",
    "CaptionArchive",
    "CaptionsLauncher",
    "DemoLauncher",
    "SubprocessLauncher",
    "add_routes",
    "caption_in",
    "to_vtt",
    "vtt_time",
]
