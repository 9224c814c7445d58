"""The caption archive: storage (store.py), formats (vtt.py) and the demo's captioner
launcher (launcher.py); its routes are in sfu/api/captions.py."""

from .store import CaptionArchive
from .vtt import caption_in, to_vtt, vtt_time

__all__ = ["CaptionArchive", "caption_in", "to_vtt", "vtt_time"]
