"""Data residency through real processes: a key or tenant restricted to a region is served only by the
deployments of that region, never by another one, even when those are down.

The two deployments of the routed model are two upstreams in this test process that keep every request
they get (``RecordingUpstream``), so each test asserts where the requests went, not only what the gateway
says in its headers. The gateway is a real ``gateway serve`` process with keys in its TOML file and in its
store.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.auth import digest, format_key, generate
from gateway.store import open_store

from .conftest import StartGateway
from .helpers import (
    RawClient,
    RecordingUpstream,
    Response,
    assert_openai_error,
    chat_body,
    free_port,
    http_request,
    provider_toml,
    routing_config,
    wait_for,
)

TENANT_ANY = "anywhere"
TENANT_EU = "eu-only"


def _key(letter: str) -> tuple[str, str, str]:
    """(key id, full key, digest) of a static key."""
    key_id = letter * 12
    secret = letter.upper() * 43
    return key_id, format_key(key_id, secret), digest(secret, b"")


OPEN_ID, OPEN_KEY, OPEN_DIGEST = _key("a")  # no residency
EU_ID, EU_KEY, EU_DIGEST = _key("b")  # key regions = ["eu"]
AP_ID, AP_KEY, AP_DIGEST = _key("c")  # key regions = ["ap"]: no deployment of "chat" is there
TENANT_ID, TENANT_KEY, TENANT_DIGEST = _key("d")  # no regions of its own; its tenant's: ["eu"]
WIDEN_ID, WIDEN_KEY, WIDEN_DIGEST = _key("e")  # of the eu tenant, asks for ["eu", "us"]: stays eu
TAG_ID, TAG_KEY, TAG_DIGEST = _key("f")  # required_tags = ["gdpr"]


@pytest.fixture
def eu() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as up:
        yield up


@pytest.fixture
def us() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as up:
        yield up


def static_key(key_id: str, key_digest: str, tenant: str, extra: str = "") -> str:
    """An ``[[auth.keys]]`` entry; ``extra``: more of its keys (a residency)."""
    return f'[[auth.keys]]\nid = "{key_id}"\ndigest = "{key_digest}"\ntenant = "{tenant}"\n{extra}\n'


def residency_config(eu_port: int, us_port: int, tmp_path: Path, *, eu_breaker: str = "") -> str:
    return routing_config(
        provider_toml("eu", eu_port, connect_timeout=1.0, read_timeout=3.0)
        + provider_toml("us", us_port, connect_timeout=1.0, read_timeout=3.0)
        + f"""
[models.chat]
strategy = "weighted"
[[models.chat.deployments]]
provider = "eu"
upstream_model = "m-eu"
name = "eu-west"
region = "eu"
tags = ["gdpr"]
[[models.chat.deployments]]
provider = "us"
upstream_model = "m-us"
name = "us-east"
region = "us"
weight = 3
[models.chat.retry]
max_attempts = 3
base_backoff = 0.0
max_backoff = 0.0
{eu_breaker}

# "ap" is a region of the file, but not of "chat"
[models.local]
[[models.local.deployments]]
provider = "us"
upstream_model = "m-ap"
region = "ap"

# a direct model: one provider, no region
[models.plain]
provider = "us"
upstream_model = "m-plain"

[auth]
required = true
{static_key(OPEN_ID, OPEN_DIGEST, TENANT_ANY)}
{static_key(EU_ID, EU_DIGEST, TENANT_ANY, 'regions = ["eu"]')}
{static_key(AP_ID, AP_DIGEST, TENANT_ANY, 'regions = ["ap"]')}
{static_key(TENANT_ID, TENANT_DIGEST, TENANT_EU)}
{static_key(TAG_ID, TAG_DIGEST, TENANT_ANY, 'required_tags = ["gdpr"]')}

[tenants.{TENANT_ANY}]
name = "no residency"

[tenants.{TENANT_EU}]
regions = ["eu"]

[store]
url = "sqlite://{tmp_path / 'gateway.db'}"
poll_interval = 0.1
"""
    )


def chat(port: int, key: str, model: str = "chat") -> Response:
    with RawClient(port) as c:
        return c.request(http_request("POST", "/v1/chat/completions", chat_body("hello", model),
                                      headers=[("authorization", f"Bearer {key}")]))


def upstream_models(up: RecordingUpstream) -> Counter[str]:
    return Counter(r.json()["model"] for r in up.requests)


def test_a_region_restricted_key_is_served_only_in_its_region(
    start_gateway: StartGateway, eu: RecordingUpstream, us: RecordingUpstream, tmp_path: Path
) -> None:
    gw = start_gateway(residency_config(eu.port, us.port, tmp_path))
    # an unrestricted key is routed as without residency: both deployments, by weight (exact per cycle)
    served = Counter(chat(gw.port, OPEN_KEY).header("x-gateway-deployment") for _ in range(8))
    assert served == {"us-east": 6, "eu-west": 2}, served
    assert upstream_models(us) == {"m-us": 6}
    assert upstream_models(eu) == {"m-eu": 2}
    # the restricted keys: every request on the eu upstream, none on us (whose weight is 3 of 4)
    for key in (EU_KEY, TENANT_KEY, TAG_KEY):
        for _ in range(8):
            resp = chat(gw.port, key)
            assert resp.status == 200, resp
            assert resp.header("x-gateway-deployment") == "eu-west"
    assert upstream_models(eu) == {"m-eu": 26}
    assert upstream_models(us) == {"m-us": 6}


def test_a_key_whose_region_has_no_deployment_is_refused_with_403(
    start_gateway: StartGateway, eu: RecordingUpstream, us: RecordingUpstream, tmp_path: Path
) -> None:
    gw = start_gateway(residency_config(eu.port, us.port, tmp_path))
    resp = chat(gw.port, AP_KEY)
    err = assert_openai_error(resp, 403, "region_not_allowed")
    assert err["type"] == "permission_error" and err["param"] == "model"
    assert AP_ID in err["message"] and '"ap"' in err["message"] and "`chat`" in err["message"]
    # nothing went anywhere; the same key is served by the model that has an "ap" deployment
    assert not eu.requests and not us.requests
    resp = chat(gw.port, AP_KEY, model="local")
    assert resp.status == 200, resp
    assert upstream_models(us) == {"m-ap": 1}
    # a direct model has no region: a key with a residency may not use it; unrestricted keys may
    assert_openai_error(chat(gw.port, EU_KEY, model="plain"), 403, "region_not_allowed")
    assert not eu.requests and upstream_models(us) == {"m-ap": 1}
    assert chat(gw.port, OPEN_KEY, model="plain").status == 200
    assert upstream_models(us) == {"m-ap": 1, "m-plain": 1}


def test_when_the_region_is_down_the_key_gets_503_never_another_region(
    start_gateway: StartGateway, us: RecordingUpstream, tmp_path: Path
) -> None:
    dead = free_port()  # the eu deployment: nothing listens there
    gw = start_gateway(residency_config(dead, us.port, tmp_path, eu_breaker="""
[models.chat.breaker]
consecutive_failures = 1
open_for = 30.0
"""))
    # the first requests fail on eu itself (a connect error: 502) until its breaker opens; then 503
    statuses: list[int] = []

    def refused_503() -> bool:
        resp = chat(gw.port, EU_KEY)
        statuses.append(resp.status)
        if resp.status == 503:
            err = assert_openai_error(resp, 503, "no_deployment_available")
            assert "eu-west" in err["message"] and "us-east" not in err["message"], err
            return True
        return False

    wait_for(refused_503, 20.0, what="a 503 for the eu key")
    assert set(statuses) <= {502, 503}, statuses
    for key in (EU_KEY, TENANT_KEY, TAG_KEY):
        assert_openai_error(chat(gw.port, key), 503, "no_deployment_available")
    assert not us.requests, [r.json() for r in us.requests]
    # an unrestricted key fails over to us as before
    resp = chat(gw.port, OPEN_KEY)
    assert resp.status == 200 and resp.header("x-gateway-deployment") == "us-east", resp
    assert upstream_models(us) == {"m-us": 1}


def test_fallbacks_stay_in_the_region(
    start_gateway: StartGateway, us: RecordingUpstream, eu: RecordingUpstream, tmp_path: Path
) -> None:
    """A failing model's fallback chain is walked with the same residency: a fallback model with no
    deployment in the region is passed over, one with a deployment there serves."""
    dead = free_port()
    text = routing_config(
        provider_toml("dead", dead, connect_timeout=1.0)
        + provider_toml("eu", eu.port, read_timeout=3.0)
        + provider_toml("us", us.port, read_timeout=3.0)
        + f"""
[models.chat]
fallbacks = ["chat-us", "chat-eu"]
[[models.chat.deployments]]
provider = "dead"
upstream_model = "m-dead"
region = "eu"
[models.chat.retry]
max_attempts = 1

[models.chat-us]
[[models.chat-us.deployments]]
provider = "us"
upstream_model = "m-us"
region = "us"

[models.chat-eu]
[[models.chat-eu.deployments]]
provider = "eu"
upstream_model = "m-eu"
region = "eu"

[auth]
required = true
{static_key(EU_ID, EU_DIGEST, "t", 'regions = ["eu"]')}
{static_key(OPEN_ID, OPEN_DIGEST, "t")}

[store]
url = "sqlite://{tmp_path / 'gateway.db'}"
"""
    )
    gw = start_gateway(text)
    for _ in range(3):
        resp = chat(gw.port, EU_KEY)
        assert resp.status == 200, resp
        assert resp.header("x-gateway-model") == "chat-eu", resp
    assert upstream_models(eu) == {"m-eu": 3}
    assert not us.requests
    resp = chat(gw.port, OPEN_KEY)  # unrestricted: the first fallback
    assert resp.status == 200 and resp.header("x-gateway-model") == "chat-us", resp


def test_store_keys_and_tenants_carry_a_residency(
    start_gateway: StartGateway, eu: RecordingUpstream, us: RecordingUpstream, tmp_path: Path
) -> None:
    """Keys made through the store (the admin API's path) are restricted the same way, and a key's
    regions are narrowed by its tenant's: a key cannot widen what its tenant allows."""
    gw = start_gateway(residency_config(eu.port, us.port, tmp_path))
    url = f"sqlite://{tmp_path / 'gateway.db'}"
    made: dict[str, str] = {}

    async def make() -> None:
        store = await open_store(url)
        try:
            await store.create_tenant("dyn-eu", allowed_regions=["eu"])
            await store.create_tenant("dyn-any")
            for name, tenant, regions in (("widen", "dyn-eu", ["eu", "us"]), ("us", "dyn-any", ["us"]),
                                          ("none", "dyn-eu", ["us"])):
                full, key_id, secret = generate()
                await store.create_key(key_id=key_id, tenant=tenant, name=name, digest=digest(secret, b""),
                                       allowed_regions=regions)
                made[name] = full
        finally:
            await store.close()

    asyncio.run(make())
    # the key of the eu tenant that names eu and us: eu only
    first = wait_for(lambda: (r := chat(gw.port, made["widen"])).status == 200 and r, 10.0, what="store key")
    assert first.header("x-gateway-deployment") == "eu-west"
    for _ in range(6):
        assert chat(gw.port, made["widen"]).header("x-gateway-deployment") == "eu-west"
    assert not us.requests
    # a us key of an unrestricted tenant: us only
    for _ in range(4):
        assert chat(gw.port, made["us"]).header("x-gateway-deployment") == "us-east"
    assert upstream_models(us) == {"m-us": 4}
    # the eu tenant's key that asks for us only: the intersection is empty, refused
    err = assert_openai_error(chat(gw.port, made["none"]), 403, "region_not_allowed")
    assert "no region" in err["message"], err
    assert upstream_models(eu) == {"m-eu": 7}


def test_call_records_name_the_deployment(
    start_gateway: StartGateway, eu: RecordingUpstream, us: RecordingUpstream, tmp_path: Path
) -> None:
    gw = start_gateway(residency_config(eu.port, us.port, tmp_path))
    assert chat(gw.port, EU_KEY).status == 200
    assert chat(gw.port, AP_KEY).status == 403

    def records() -> list[dict[str, object]]:
        lines = gw.process.log_path.read_text().splitlines()
        return [json.loads(ln) for ln in lines if ln.startswith('{"ts":')]

    found = wait_for(lambda: len(records()) >= 2 and records(), 10.0, what="two call records")
    by_key = {r.get("key_id"): r for r in found}
    assert by_key[EU_ID]["deployment"] == "eu-west", by_key
    assert by_key[AP_ID]["status"] == 403 and by_key[AP_ID].get("error_code") == "region_not_allowed", by_key


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('regions = []', "auth.keys[0].regions: must list at least one region"),
        ('regions = ["eu", "eu"]', 'auth.keys[0].regions[1]: "eu" is listed twice'),
        ('regions = ["ue"]', 'auth.keys[0].regions[0]: no deployment has region "ue" (the deployments\' regions: "eu")'),
        ('regions = ["europe"]', 'no deployment has region "europe"'),
        ('regions = [""]', "auth.keys[0].regions[0]: must not be empty"),
        ('required_tags = ["gpdr"]', 'no deployment carries tag "gpdr"; did you mean "gdpr"?'),
        ('regions = "eu"', "auth.keys[0].regions"),
    ],
)
def test_gateway_check_refuses_bad_residency(snippet: str, expected: str, tmp_path: Path) -> None:
    text = routing_config(provider_toml("eu", 1) + f"""
[models.chat]
[[models.chat.deployments]]
provider = "eu"
region = "eu"
tags = ["gdpr"]

[auth]
required = true
{static_key(EU_ID, EU_DIGEST, "t", snippet)}
""")
    out = _check(text, tmp_path)
    assert out.returncode != 0, out.stdout + out.stderr
    assert expected in out.stdout + out.stderr, out.stdout + out.stderr


def test_gateway_check_refuses_a_key_wider_than_its_tenant(tmp_path: Path) -> None:
    text = routing_config(provider_toml("eu", 1) + provider_toml("us", 2) + f"""
[models.chat]
[[models.chat.deployments]]
provider = "eu"
region = "eu"
[[models.chat.deployments]]
provider = "us"
region = "us"

[auth]
required = true
{static_key(EU_ID, EU_DIGEST, "t", 'regions = ["eu", "us"]')}

[tenants.t]
regions = ["eu"]
""")
    out = _check(text, tmp_path)
    assert out.returncode != 0
    assert ('auth.keys[0].regions[1]: "us" is not one of tenant t\'s regions ("eu")'
            in out.stdout + out.stderr), out.stdout + out.stderr
    bad_deployment = text.replace('region = "us"', 'region = ""').replace('regions = ["eu", "us"]', "")
    out = _check(bad_deployment, tmp_path)
    assert out.returncode != 0
    assert "models.chat.deployments[1].region: must not be empty" in out.stdout + out.stderr


def _check(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"check-{time.monotonic_ns()}.toml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)



def test_a_budget_downgrade_stays_in_the_region(
    start_gateway: StartGateway, eu: RecordingUpstream, us: RecordingUpstream, tmp_path: Path
) -> None:
    """A budget whose action is to downgrade to a model that has no deployment in the caller's region
    refuses the request (403) instead of sending it there; an unrestricted caller is downgraded."""
    text = routing_config(
        provider_toml("eu", eu.port, read_timeout=3.0) + provider_toml("us", us.port, read_timeout=3.0)
        + f"""
[models.chat]
[[models.chat.deployments]]
provider = "eu"
upstream_model = "gpt-4o"
region = "eu"

# the downgrade model: direct, in no region
[models.plain]
provider = "us"
upstream_model = "m-plain"

[auth]
required = true
{static_key(EU_ID, EU_DIGEST, "t", 'regions = ["eu"]')}
{static_key(OPEN_ID, OPEN_DIGEST, "t")}

[tenants.t]
budget = "b"

[limits.budgets.b]
usd_per_day = 0.01
action = "downgrade"
downgrade_model = "plain"

[pricing."gpt-4o"]
input = 1.0
output = 1.0

[store]
url = "sqlite://{tmp_path / 'gateway.db'}"
"""
    )
    gw = start_gateway(text)
    # a small request fits the budget: served in eu
    assert chat(gw.port, EU_KEY).header("x-gateway-deployment") is not None
    assert upstream_models(eu) == {"gpt-4o": 1}
    # one whose reservation does not fit (20,000 tokens at a millionth of a dollar each) is downgraded...
    big = http_request("POST", "/v1/chat/completions", chat_body("hello", "chat", max_tokens=20_000),
                       headers=[("authorization", f"Bearer {OPEN_KEY}")])
    with RawClient(gw.port) as c:
        resp = c.request(big)
    assert resp.status == 200 and resp.header("x-gateway-downgraded") == "chat -> plain", resp
    assert upstream_models(us) == {"m-plain": 1}
    # ... but not for the eu key: the downgrade model is not in its region
    with RawClient(gw.port) as c:
        resp = c.request(big.replace(OPEN_KEY.encode(), EU_KEY.encode()))
    err = assert_openai_error(resp, 403, "region_not_allowed")
    assert "`plain`" in err["message"], err
    assert upstream_models(us) == {"m-plain": 1} and upstream_models(eu) == {"gpt-4o": 1}
