"""The old import path of the signalling code, kept for code written against it.

The WebSocket protocol now lives in sfu/api/ (websocket.py: the route; signalling.py: the
connection; protocol.py: the message format; http_join.py: the join over HTTP) and joins go
down sfu/rooms/joins.py.
"""

from .api.http_join import HTTP_JOINS_KEY, add_http_join_routes
from .api.keys import NODE_KEY
from .api.protocol import SignallingError, url_join
from .api.signalling import SignallingConnection, State
from .api.websocket import websocket_handler

__all__ = [
    "HTTP_JOINS_KEY",
    "NODE_KEY",
    "SignallingConnection",
    "SignallingError",
    "State",
    "add_http_join_routes",
    "url_join",
    "websocket_handler",
]
