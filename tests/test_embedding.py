"""`sfu.create_app` mounted inside a shop's aiohttp app (examples/embed_in_shop.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from sfu.api.keys import NODE_KEY
from sfu.auth import Grants, mint_token
from sfu.client import RoomClient
from sfu.media.peer import MediaPeer

from .conftest import LOOPBACK, free_port
from .media_sources import ColorVideoTrack, ToneAudioTrack

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embed_in_shop.py"


def load_example():
    spec = importlib.util.spec_from_file_location("embed_in_shop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("embed_in_shop", module)
    spec.loader.exec_module(module)
    return module


async def test_sfu_mounted_in_a_shop_app_works_and_shuts_down_with_it():
    example = load_example()
    shop = example.create_shop_app()
    node = shop[example.SFU_APP][NODE_KEY]
    runner = web.AppRunner(shop)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    publisher = viewer = whip = None
    cleaned = False
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/") as response:
                assert response.status == 200 and "shop" in await response.text()
            async with session.get(f"{base}/live/healthz") as response:
                assert response.status == 200
                assert (await response.json())["node_id"] == node.node_id
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 404  # the SFU lives under /live/ only
            async with session.get(f"{base}/live-token/shop?identity=viewer") as response:
                assert response.status == 200
                viewer_token = (await response.json())["token"]

            # WebSocket signalling through the mounted sub-app
            publisher = await RoomClient.connect(
                f"{base}/live", _token(shop, example), network=LOOPBACK
            )
            await publisher.publish([ColorVideoTrack((10, 200, 10)), ToneAudioTrack(440)])
            viewer = await RoomClient.connect(f"{base}/live", viewer_token, network=LOOPBACK)
            await viewer.next_track(kind="video", publisher="host", timeout=15)
            room = node.rooms.rooms["shop"]
            sfu_peers = [room.participants["host"].publisher.peer]
            sfu_peers.append(room.participants["viewer"].subscriber.peer)
            await asyncio.wait_for(sfu_peers[0].connected.wait(), 10)

            # WHIP through the mount: Location keeps the /live prefix and DELETE works on it
            whip = MediaPeer(LOOPBACK, label="embed-whip")
            whip.pc.addTransceiver(ColorVideoTrack((10, 10, 200)), direction="sendonly")
            headers = {
                "Authorization": f"Bearer {_token(shop, example, 'obs')}",
                "Content-Type": "application/sdp",
            }
            offer = await whip.offer()
            async with session.post(f"{base}/live/whip/shop", data=offer, headers=headers) as r:
                assert r.status == 201, await r.text()
                location = r.headers["Location"]
                await whip.accept_answer(await r.text())
            assert location.startswith("/live/whip/shop/")
            async with session.delete(f"{base}{location}") as response:
                assert response.status == 200
            assert "obs" not in room.participants

            # a second WHIP session is left open for shutdown to close
            whip2 = MediaPeer(LOOPBACK, label="embed-whip2")
            whip2.pc.addTransceiver(ColorVideoTrack((10, 10, 200)), direction="sendonly")
            offer = await whip2.offer()
            async with session.post(f"{base}/live/whip/shop", data=offer, headers=headers) as r:
                assert r.status == 201
                await whip2.accept_answer(await r.text())
            sfu_peers.append(room.participants["obs"].publisher.peer)
            await whip2.close()

        # shutting the shop down shuts the SFU down: every peer connection closed
        await asyncio.wait_for(runner.cleanup(), 15)
        cleaned = True
        assert all(peer.closed for peer in sfu_peers)
        assert all(peer.pc.connectionState == "closed" for peer in sfu_peers)
        assert node.closing and node.rooms.rooms == {} and node.http_sessions == {}
        assert node.websockets == set()
        await asyncio.wait_for(publisher._reader, 5)  # the server closed the signalling socket
    finally:
        for client in (publisher, viewer):
            if client is not None:
                await client.close()
        if whip is not None:
            await whip.close()
        if not cleaned:
            await runner.cleanup()


def _token(shop: web.Application, example, identity: str = "host") -> str:
    """A publish+subscribe token signed with the mounted SFU's own settings."""
    return mint_token(
        shop[example.SFU_CONFIG].auth,
        identity=identity,
        room="shop",
        grants=Grants(publish=True, subscribe=True),
    )


async def test_the_example_runs_as_a_script():
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "--port",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/live/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the example never answered /live/healthz")
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                assert response.status == 200
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, stderr.decode()
        assert b"DEVELOPMENT API KEY" in stderr  # the mounted SFU's startup hook ran
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
