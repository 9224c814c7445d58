"""Python client SDK: join a room over WebSocket signalling, publish and receive aiortc tracks.

    client = await RoomClient.connect("http://127.0.0.1:8080", token)
    await client.publish([video_track, audio_track])
    track_id, track = await client.next_track(kind="video")
    frame = await track.recv()
    await client.leave()

`RoomClient.connect(..., reconnect=Reconnect(fallbacks=[...]))` resumes on the same or another
node when the connection dies or the node drains (resume.py). Used by the tests, the
benchmarks and the agent.
"""

from .resume import Reconnect
from .room_client import RemoteTrack, RoomClient, SignallingError

__all__ = ["Reconnect", "RemoteTrack", "RoomClient", "SignallingError"]
