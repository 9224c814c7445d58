"""Python client SDK: join a room over WebSocket signalling, publish and receive aiortc tracks.

    client = await RoomClient.connect("http://127.0.0.1:8080", token)
    await client.publish([video_track, audio_track])
    track_id, track = await client.next_track(kind="video")
    frame = await track.recv()
    await client.leave()

Used by the tests, the benchmarks and the agent.
"""

from .room_client import RemoteTrack, RoomClient, SignallingError

__all__ = ["RemoteTrack", "RoomClient", "SignallingError"]
