"""The [captions] table of the agent's TOML."""

from __future__ import annotations

import pytest

from agent.captions.config import CaptionSettings, caption_settings
from agent.config import AgentConfig, load_config


def test_captions_table_in_the_agent_config(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(
        '[captions]\nsource_language = "pt"\nhost_identities = ["obs-studio"]\n'
        "end_of_phrase_silence_ms = 400\n"
    )
    config = load_config(path)
    settings = caption_settings(config)
    assert settings.source_language == "pt" and settings.host_identities == ["obs-studio"]
    assert settings.end_of_phrase_silence_ms == 400
    assert caption_settings(AgentConfig()) == CaptionSettings()
    assert caption_settings({"idle_exit_s": 5}).idle_exit_s == 5
    with pytest.raises(ValueError):
        caption_settings({"no_such_setting": 1})
    path.write_text("[captions]\nno_such_setting = 1\n")
    with pytest.raises(ValueError):
        load_config(path)


def test_decoding_and_vocabulary_settings(tmp_path):
    from agent.captions.vocabulary import build_prompts

    path = tmp_path / "agent.toml"
    path.write_text(
        "[captions]\nfinal_beam_size = 3\nvocabulary_from_shop = false\n"
        'vocabulary = { pt = ["pix", "boleto"], "*" = ["Maré Studio"] }\n'
    )
    settings = caption_settings(load_config(path))
    assert settings.final_beam_size == 3
    assert build_prompts(settings, languages=["en"]) == {
        "en": "Maré Studio",
        "pt": "pix, boleto, Maré Studio",
    }
    assert CaptionSettings().final_beam_size == 5 and CaptionSettings().vocabulary_from_shop
