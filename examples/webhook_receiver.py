"""A shop backend's endpoint for the SFU's webhooks: verify, deduplicate, act.

    python examples/webhook_receiver.py --api-key eu-west --api-secret "$SFU_API_SECRET" \
        [--port 8090]

and in the node's config:

    [webhooks]
    urls = ["http://127.0.0.1:8090/hooks/sfu"]

Every request carries `Authorization: Bearer <JWT>`, signed (HS256) with the API secret the
backend already uses to mint access tokens, and holding the SHA-256 of the body; a request
that fails the check gets 401. Deliveries are retried until answered 2xx, so an event can
arrive twice: the receiver skips an `id` it has seen. Events of one room arrive in order.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sfu.webhooks import WebhookVerificationError, verify_webhook

logger = logging.getLogger("shop.webhooks")

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
MAX_BODY = 1 << 20
SEEN_IDS = 10_000  # recent event ids kept for deduplication


def create_receiver(
    api_key: str, api_secret: str, handle: EventHandler, path: str = "/hooks/sfu"
) -> web.Application:
    """An aiohttp app that passes each verified, new event to `handle`."""
    seen: OrderedDict[str, None] = OrderedDict()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()  # the raw bytes: the signature covers exactly these
        try:
            event = verify_webhook(
                body, request.headers.get("Authorization", ""), api_key, api_secret
            )
        except WebhookVerificationError as exc:
            logger.warning("rejected a webhook: %s", exc)
            return web.json_response({"error": str(exc)}, status=401)
        event_id = str(event.get("id", ""))
        if event_id in seen:
            return web.json_response({"ok": True, "duplicate": True})
        await handle(event)  # raise to answer 500: the node retries later
        seen[event_id] = None
        while len(seen) > SEEN_IDS:
            seen.popitem(last=False)
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(path, receive)
    return app


async def print_event(event: dict[str, Any]) -> None:
    """What a shop would do: start/stop a show page, count viewers, bill an agent minute..."""
    who = event.get("participant", {}).get("identity", "")
    print(f"{event['event']:<20} room={event.get('room', {}).get('name')} {who}")
    logger.debug("%s", json.dumps(event))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--api-secret", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    web.run_app(
        create_receiver(args.api_key, args.api_secret, print_event), host=args.host, port=args.port
    )


if __name__ == "__main__":
    main()
