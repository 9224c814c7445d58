"""The caption archive: storage, the HTTP API and its tokens, and the WebVTT export (parsed
strictly here; tests/captions/test_browser.py also has Chromium's own parser read it)."""

from __future__ import annotations

import re

import aiohttp

from sfu.auth import Grants, mint_token
from sfu.captions import CaptionArchive, to_vtt, vtt_time

from .conftest import admin_token, captioner_token

T0 = 1_760_000_000.0
ENTRIES = [
    {
        "track": "TR_a",
        "seq": 1,
        "speaker": "host",
        "start": T0 + 1.25,
        "end": T0 + 3.5,
        "lang": "en",
        "text": "Welcome to our live sale.",
        "translations": {"pt": "Bem-vindo à nossa venda ao vivo."},
    },
    {
        "track": "TR_a",
        "seq": 2,
        "speaker": "host",
        "start": T0 + 3661.0,  # past an hour: the hours field
        "end": T0 + 3663.042,
        "lang": "en",
        "text": "Sizes <S> & <M> --> sold out\nsoon",
        "translations": {},
    },
]

TIMING = re.compile(
    r"^(?:(\d{2,}):)?([0-5]\d):([0-5]\d)\.(\d{3}) --> (?:(\d{2,}):)?([0-5]\d):([0-5]\d)\.(\d{3})$"
)


def _seconds(h, m, s, ms) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_vtt(text: str) -> list[dict]:
    """A strict reading of the WebVTT file structure (W3C WebVTT §4.1); raises on any error."""
    assert not text.startswith("\ufeff")
    lines = text.split("\n")
    assert lines[0] == "WEBVTT" or lines[0].startswith(("WEBVTT ", "WEBVTT\t")), lines[0]
    assert lines[1] == "", "the header ends with a blank line"
    blocks, block = [], []
    for line in lines[2:]:
        if line == "":
            if block:
                blocks.append(block)
            block = []
        else:
            block.append(line)
    if block:
        blocks.append(block)
    cues, last_start = [], -1.0
    for block in blocks:
        if block[0].startswith("NOTE"):
            assert all("-->" not in line for line in block)
            continue
        if "-->" not in block[0]:
            block = block[1:]  # the cue identifier
        match = TIMING.match(block[0])
        assert match, f"bad timing line {block[0]!r}"
        g = match.groups()
        start, end = _seconds(*g[:4]), _seconds(*g[4:])
        assert start < end and start >= last_start, (start, end, last_start)
        last_start = start
        payload = block[1:]
        assert payload and all("-->" not in line for line in payload)
        body = "\n".join(payload)
        assert "&" not in re.sub(r"&(amp|lt|gt|nbsp|lrm|rlm);", "", body), "bare ampersand"
        tags = re.findall(r"<(/?)([a-z]+)[^>]*>", body)
        assert all(name in {"c", "i", "b", "u", "v", "ruby", "rt", "lang"} for _, name in tags)
        assert sum(1 if not closing else -1 for closing, _ in tags) == 0, "unbalanced tags"
        text_only = re.sub(r"<[^>]+>", "", body)
        text_only = text_only.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        cues.append({"start": start, "end": end, "text": text_only, "raw": body})
    return cues


def test_vtt_times_and_escaping():
    assert vtt_time(0) == "00:00:00.000" and vtt_time(3661.042) == "01:01:01.042"
    assert vtt_time(-2) == "00:00:00.000"
    vtt = to_vtt(ENTRIES, T0, "pt", "room live")
    cues = parse_vtt(vtt)
    assert [c["text"] for c in cues] == [
        "Bem-vindo à nossa venda ao vivo.",
        "Sizes <S> & <M> --> sold out soon",
    ]
    assert cues[0]["start"] == 1.25 and cues[0]["end"] == 3.5
    assert cues[1]["start"] == 3661.0 and abs(cues[1]["end"] - 3663.042) < 1e-9
    # the second has no Portuguese: source text, marked, and a NOTE says why
    assert cues[1]["raw"].startswith("<c.untranslated>") and "NOTE" in vtt
    source = parse_vtt(to_vtt(ENTRIES, T0, None))
    assert source[0]["text"] == "Welcome to our live sale." and "NOTE" not in to_vtt(
        ENTRIES[:1], T0, None
    )


def test_archive_storage_is_idempotent(tmp_path):
    archive = CaptionArchive(tmp_path / "a" / "captions.sqlite3")
    assert archive.store("live", "s1", T0, ENTRIES) == 2
    archive.store("live", "s1", T0, ENTRIES[:1])  # a retried post
    archive.store("live", "s2", T0 + 9000, ENTRIES[:1])
    assert [s["captions"] for s in archive.sessions("live")] == [2, 1]
    assert [c["seq"] for c in archive.captions("live", "s1")] == [1, 2]
    assert archive.captions("live", "s1")[0]["translations"]["pt"].startswith("Bem-vindo")
    assert archive.sessions("other") == []
    archive.close()


async def test_archive_http_api_and_its_tokens(captions_node):
    node = captions_node
    url = f"{node.url}/api/rooms/live/captions"
    body = {"session": "show-1", "started_at": T0, "entries": ENTRIES}
    viewer = node.token("viewer", "live", subscribe=True)
    other_room = captioner_token(node, "elsewhere")
    async with aiohttp.ClientSession() as http:

        async def post(token: str | None, payload) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with http.post(url, json=payload, headers=headers) as response:
                return response.status

        assert await post(None, body) == 401
        assert await post(viewer, body) == 403  # no agent grant
        assert await post(other_room, body) == 403  # the token is for another room
        assert await post(captioner_token(node, "live"), {**body, "session": "bad id!"}) == 400
        bad = {**ENTRIES[0], "seq": -1}
        assert await post(captioner_token(node, "live"), {**body, "entries": [bad]}) == 400
        assert await post(captioner_token(node, "live"), body) == 201
        assert await post(captioner_token(node, "live"), body) == 201  # retry: no duplicates
        # a worker-wide agent token (room "*") may post for any room
        worker = mint_token(node.config.auth, identity="w", room="*", grants=Grants(agent=True))
        assert await post(worker, {**body, "session": "show-2", "entries": ENTRIES[:1]}) == 201

        admin = {"Authorization": f"Bearer {admin_token(node)}"}
        async with http.get(f"{url}.json", headers={"Authorization": f"Bearer {viewer}"}) as r:
            assert r.status == 403
        async with http.get(f"{url}.json?session=show-1&lang=pt-BR", headers=admin) as r:
            assert r.status == 200
            data = await r.json()
        assert data["session"] == "show-1" and data["lang"] == "pt"
        assert [s["session"] for s in data["sessions"]] == ["show-1", "show-2"]
        assert [c["untranslated"] for c in data["captions"]] == [False, True]
        assert data["captions"][0]["text"] == "Bem-vindo à nossa venda ao vivo."
        assert data["captions"][0]["start"] == 1.25
        assert data["captions"][0]["source_text"] == "Welcome to our live sale."
        async with http.get(f"{url}.vtt?session=show-1&lang=pt", headers=admin) as r:
            assert r.status == 200 and r.content_type == "text/vtt"
            cues = parse_vtt(await r.text())
        assert len(cues) == 2 and cues[0]["text"].startswith("Bem-vindo")
        async with http.get(f"{url}.vtt", headers=admin) as r:  # newest session, source text
            cues = parse_vtt(await r.text())
        assert [c["text"] for c in cues] == ["Welcome to our live sale."]
        async with http.get(f"{node.url}/api/rooms/empty/captions.vtt", headers=admin) as r:
            assert r.status == 404
        async with http.get(f"{url}.json?session=nope", headers=admin) as r:
            assert r.status == 404


async def test_demo_switch_needs_demo_mode_and_a_valid_body(captions_node):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{captions_node.url}/demo/captions", json={"room": "x"}) as r:
            assert r.status == 400  # 'enabled' missing
        async with http.post(
            f"{captions_node.url}/demo/captions", json={"room": "a b", "enabled": True}
        ) as r:
            assert r.status == 400
        async with http.post(
            f"{captions_node.url}/demo/captions", json={"room": "x", "enabled": False}
        ) as r:
            assert r.status == 200 and (await r.json())["stopped"] is False


async def test_no_demo_switch_without_demo_mode(sfu_node):
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{sfu_node.url}/demo/captions", json={"room": "x", "enabled": True}
        ) as r:
            assert r.status in (404, 405)
