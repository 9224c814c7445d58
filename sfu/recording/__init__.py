"""Recording of a live sale: the host's tracks written to WebM as received (no transcoding),
the room's captions beside it as WebVTT, and signed links for the replay page.

Pieces, each with one job: `frames.py` (RTP packets -> whole frames, loss and gaps),
`timeline.py` (RTP timestamps -> monotonic file milliseconds), `writer.py` (PyAV muxing in a
thread), `tap.py` (the Producer-side hook, simulcast layer choice), `recorder.py` (one show and
the node's recordings), `links.py` (signed short-lived file links), `routes.py` (HTTP).
"""

from .recorder import Recorder, Recording, RecordingError

__all__ = ["Recorder", "Recording", "RecordingError"]
