"""A selective forwarding unit for live selling and 1-to-1 video, built on aiortc."""

from .app import create_app
from .config import Config

__all__ = ["Config", "create_app"]
__version__ = "0.1.0"
