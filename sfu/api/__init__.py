"""The HTTP surfaces, routes only: each decodes its wire format, sends the request down the
one join path (sfu/rooms/joins.py) or to the service it names, and encodes the answer.

* websocket.py, signalling.py, protocol.py: `GET /rtc`, the signalling WebSocket (socket,
  connection state machine, message format);
* http_join.py: `POST /rtc/join|answer|leave`, the join without a socket;
* whip.py: WHIP ingest and WHEP playback;
* agents.py: the agent jobs API and the workers' socket;
* captions.py: the caption archive's API and the demo captions switch.
"""
