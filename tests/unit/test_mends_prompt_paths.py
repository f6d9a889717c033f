"""A prompt's custom ``path`` may not take a dialect's path (``/v1/messages``, ``/v1/responses``): it
would shadow that API for every client, and ``/v1/messages`` serves ``prompt:NAME`` models itself."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_config_text

BASE = """
[providers.mock]
type = "mock"

[models.mock-1]
provider = "mock"
"""


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens", "/v1/responses"])
def test_a_dialects_path_is_not_a_prompt_path(path: str) -> None:
    text = BASE + f"""
[prompts.p]
live = "v1"
path = "{path}"
[prompts.p.versions.v1]
model = "mock-1"
messages = [{{ role = "user", content = "hi" }}]
"""
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "gateway.toml")
    assert any("prompts.p.path" in e and "already serves" in e for e in info.value.errors), info.value.errors
