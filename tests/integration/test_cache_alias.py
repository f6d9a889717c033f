"""The memory tier's raw-bytes aliases through real processes: a byte-identical repeat answers from the
alias, and the alias never outlives or outranks the entry it renders (a no-cache refresh, the policy's
``when``, another tenant)."""

from __future__ import annotations

from .conftest import StartGateway
from .test_cache import KEY_A, KEY_B, TENANTS, ask, cache_toml, outcome


def test_a_refreshed_entry_is_what_repeats_get(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(cache_toml(mock_port))  # one worker: every request sees the same memory tier
    first = ask(gw, "refresh me")
    assert outcome(first) == "miss"
    for _ in range(3):  # a canonical hit, then hits from its alias
        again = ask(gw, "refresh me")
        assert outcome(again) == "hit"
        assert again.json()["id"] == first.json()["id"]
    fresh = ask(gw, "refresh me", headers=(("Cache-Control", "no-cache"),))
    assert outcome(fresh) == "bypass"
    assert fresh.json()["id"] != first.json()["id"]
    for _ in range(3):  # the alias of the old entry answers no more: the refreshed entry does
        after = ask(gw, "refresh me")
        assert outcome(after) == "hit"
        assert after.json()["id"] == fresh.json()["id"]


def test_byte_identical_repeats_stay_in_their_tenant(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(cache_toml(mock_port, "", TENANTS))
    assert outcome(ask(gw, "same bytes", key=KEY_A)) == "miss"
    for _ in range(3):
        assert outcome(ask(gw, "same bytes", key=KEY_A)) == "hit"
    assert outcome(ask(gw, "same bytes", key=KEY_B)) == "miss"


def test_stream_and_whole_repeats_get_their_own_form(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(cache_toml(mock_port))
    assert outcome(ask(gw, "two forms")) == "miss"
    for _ in range(3):
        whole = ask(gw, "two forms")
        assert outcome(whole) == "hit" and whole.header("content-type") == "application/json"
        streamed = ask(gw, "two forms", stream=True)
        assert outcome(streamed) == "hit" and streamed.header("content-type") == "text/event-stream"
        assert streamed.body.rstrip().endswith(b"data: [DONE]")
