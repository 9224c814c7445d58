"""The application keys the routes find the node's objects under."""

from __future__ import annotations

from aiohttp import web

from ..node import SfuNode

NODE_KEY: web.AppKey[SfuNode] = web.AppKey("sfu_node", SfuNode)
