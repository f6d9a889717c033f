"""Data residency, in process: the constraint's algebra, the router's masks (first pick, retries,
fallbacks, 403 vs 503), the key table's narrowing, the config checks and the admin API's fields.

The router tests drive both the compiled core and its twin when the extension is built (the router is a
subclass of whichever ``gateway._core.route`` loaded; ``RouterCore.pick`` is exercised directly too).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway._core.http import Request
from gateway.admin.app import AdminApp
from gateway.auth import keyformat
from gateway.auth.table import KeyTable
from gateway.config import ConfigError, load_config, load_config_text
from gateway.config.check import check_main
from gateway.routing.config import DeploymentConfig, RetryConfig, RoutingConfig
from gateway.routing.outcome import Outcome
from gateway.routing.residency import Residency, narrow, residency
from gateway.routing.router import NoDeploymentAvailable, RegionNotAllowed, RequestInfo, Router, build_routers
from gateway.store import open_store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OK, FAIL = Outcome.OK, Outcome.SERVER_ERROR
EU = residency(["eu"])
assert EU is not None


def routers(**models: RoutingConfig) -> dict[str, Router]:
    return build_routers(models)


def model(*deployments: dict[str, Any], **kw: Any) -> RoutingConfig:
    return RoutingConfig(deployments=[DeploymentConfig(**d) for d in deployments], **kw)


def eu_us(**kw: Any) -> RoutingConfig:
    return model(
        {"provider": "eu", "region": "eu", "tags": ["gdpr"]},
        {"provider": "us", "region": "us", "weight": 3},
        {"provider": "eu2", "region": "eu"},
        **kw,
    )


def rnd() -> Any:
    return random.Random(7).random


# -- the constraint ----------------------------------------------------------------------------------------


def test_equal_constraints_are_one_object_and_none_means_unconstrained() -> None:
    assert residency(["eu", "fr"], ["gdpr"]) is residency(("fr", "eu"), {"gdpr"})
    assert residency(None) is None and residency(None, ()) is None
    both = residency(["eu"], ["gdpr"])
    assert both is not None and both.matches("eu", ("gdpr", "x")) and not both.matches("eu", ())
    assert not both.matches(None, ("gdpr",)) and not both.matches("us", ("gdpr",))
    tags_only = residency(None, ["gdpr"])
    assert tags_only is not None and tags_only.matches(None, ["gdpr"]) and tags_only.matches("us", ["gdpr"])
    assert both.text == 'in region "eu" and tagged "gdpr"'


def test_a_key_narrows_its_tenant_never_widens() -> None:
    tenant = residency(["eu", "fr"])
    assert narrow(tenant, None) is tenant and narrow(None, EU) is EU and narrow(None, None) is None
    assert narrow(tenant, residency(["eu", "us"])) is EU
    wider = narrow(tenant, residency(["us"]))
    assert wider is not None and wider.regions == frozenset() and not wider.matches("us", ())
    assert "no region" in wider.text
    tagged = narrow(tenant, residency(None, ["gdpr"]))
    assert tagged is residency(["eu", "fr"], ["gdpr"])
    assert narrow(residency(None, ["a"]), residency(None, ["b"])) is residency(None, ["a", "b"])


# -- the router --------------------------------------------------------------------------------------------


def test_first_pick_and_plans_stay_in_the_region() -> None:
    r = routers(m=eu_us())["m"]
    info = RequestInfo(residency=EU)
    random_ = rnd()
    picked = Counter(r.deployments[r.pick(info, float(k), random_)].name for k in range(40))
    assert picked == {"eu": 20, "eu2": 20}, picked
    planned = Counter(next(r.plan(info, 100.0 + k, random_)).deployment.name for k in range(40))
    assert set(planned) == {"eu", "eu2"}
    # unconstrained requests are unaffected: the us deployment takes its weight
    free = Counter(r.deployments[r.pick(RequestInfo(), 200.0 + k, random_)].name for k in range(50))
    assert free == {"us": 30, "eu": 10, "eu2": 10}, free
    # info() reads the key's residency, whatever the strategy needs otherwise
    key = type("Key", (), {"id": "k", "residency": EU})()
    assert r.info(None, key, None, 10).residency is EU
    assert r.info(None, None, None, 10).residency is None


def test_the_mask_is_memoized_per_router_and_constraint() -> None:
    r = routers(m=eu_us())["m"]
    assert r.allowed(None) == -1
    assert r.allowed(EU) == 0b101 and r._allowed == {EU: 0b101}
    assert r.allowed(residency(None, ["gdpr"])) == 0b001
    assert r.allowed(residency(["ap"])) == 0


def test_retries_stay_in_the_region_and_then_503_lists_only_it() -> None:
    r = routers(m=eu_us(retry=RetryConfig(max_attempts=4, base_backoff=0.0, max_backoff=0.0)))["m"]
    attempts = r.plan(RequestInfo(residency=EU), 0.0, rnd())
    tried = []
    for a in attempts:
        tried.append(a.deployment.name)
        attempts.report(FAIL, 0.0)
    assert set(tried) == {"eu", "eu2"} and len(tried) == 4, tried
    # open both eu breakers: the eu request is refused with 503 naming them only; the us one still goes
    for name in ("eu", "eu2"):
        for _ in range(5):
            r.record(r.by_name[name], FAIL, 0.0, 0.0, 1.0)
    with pytest.raises(NoDeploymentAvailable) as info:
        r.plan(RequestInfo(residency=EU), 2.0, rnd())
    assert info.value.status == 503 and info.value.retry_after is not None
    assert "eu" in info.value.message and "us" not in info.value.message, info.value.message
    assert r.pick(RequestInfo(residency=EU), 2.0, rnd()) == -1
    assert next(r.plan(RequestInfo(), 2.0, rnd())).deployment.name == "us"


def test_no_matching_deployment_is_403_before_any_attempt() -> None:
    r = routers(m=eu_us())["m"]
    ap = residency(["ap"])
    assert ap is not None
    assert r.pick(RequestInfo(residency=ap), 0.0, rnd()) == -1
    with pytest.raises(RegionNotAllowed) as info:
        r.plan(RequestInfo(key_id="abcdefghijkl", residency=ap), 0.0, rnd())
    err = info.value
    assert (err.status, err.code, err.type, err.param) == (403, "region_not_allowed", "permission_error", "model")
    assert err.message == (
        'The API key abcdefghijkl may only be served by deployments in region "ap"; the model `m` has none.'
    )


def test_fallbacks_pass_over_models_without_a_matching_deployment() -> None:
    rs = routers(
        m=model({"provider": "eu-dead", "region": "eu"}, fallbacks=["us-only", "eu-backup"],
                retry=RetryConfig(max_attempts=1)),
        **{"us-only": model({"provider": "us", "region": "us"}),
           "eu-backup": model({"provider": "eu-b", "region": "eu"})},
    )
    attempts = rs["m"].plan(RequestInfo(residency=EU), 0.0, rnd())
    tried = []
    for a in attempts:
        tried.append(a.model)
        attempts.report(FAIL if a.model == "m" else OK, 0.0)
    assert tried == ["m", "eu-backup"]
    attempts = rs["m"].plan(RequestInfo(), 0.0, rnd())
    tried = []
    for a in attempts:
        tried.append(a.model)
        attempts.report(FAIL if a.model == "m" else OK, 0.0)
    assert tried == ["m", "us-only"]


# -- keys and tenants --------------------------------------------------------------------------------------


def test_key_table_narrows_keys_within_tenants() -> None:
    config = load_config(EXAMPLES / "data_residency.toml")
    table = KeyTable(keyformat.Digester(b""), static_keys=config.auth.keys, static_tenants=config.tenants)
    eu, anyk, gdpr = (table.keys[k] for k in ("eukeyexample", "anykeyexampl", "gdprkeyexamp"))
    assert eu.residency is EU and not eu.unrestricted
    assert anyk.residency is None and anyk.unrestricted
    assert gdpr.residency is residency(None, ["gdpr"]) and not gdpr.unrestricted


def test_data_residency_example_passes_gateway_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main(str(EXAMPLES / "data_residency.toml")) == 0
    text = (EXAMPLES / "data_residency.toml").read_text()
    # the demo keys in the comment are the keys whose digests the file holds
    for line in text.splitlines():
        if "=gw-" in line:
            full = line.split("=", 1)[1].split()[0]
            key_id, secret = keyformat.parse(full)
            assert f'id = "{key_id}"\ndigest = "{keyformat.digest(secret, b"")}"' in text


def test_config_errors_name_the_key_path() -> None:
    base = """
[providers.p]
type = "mock"
[models.chat]
[[models.chat.deployments]]
provider = "p"
region = "eu"
tags = ["gdpr"]
[tenants.t]
regions = ["eu"]
"""
    with pytest.raises(ConfigError) as info:
        load_config_text(base + '[tenants.u]\nregions = []\nrequired_tags = ["", "gdpr", "gdpr", "pci"]\n')
    errors = "\n".join(info.value.errors)
    assert "tenants.u.regions: must list at least one region" in errors
    assert "tenants.u.required_tags[0]: must not be empty" in errors
    assert 'tenants.u.required_tags[2]: "gdpr" is listed twice' in errors
    assert 'tenants.u.required_tags[3]: no deployment carries tag "pci"' in errors
    with pytest.raises(ConfigError) as info:
        load_config_text(base + "[tenants.v]\nregions = [1]\n")
    assert "tenants.v.regions[0]" in "\n".join(info.value.errors)


# -- the admin API -----------------------------------------------------------------------------------------


class _Recorder:
    status = 0
    body = b""
    disconnected = False

    def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.body = status, body


def test_admin_api_sets_shows_and_checks_the_residency(tmp_path: Path) -> None:
    token = "operator-token-0123456789"
    config = load_config_text(f"""
[providers.p]
type = "mock"
[models.m]
[[models.m.deployments]]
provider = "p"
region = "eu"
tags = ["gdpr"]
[tenants.cfg]
regions = ["eu"]
required_tags = ["gdpr"]
[auth]
required = true
[admin]
operator_token = "{keyformat.digest(token, b'')}"
""")

    async def go() -> None:
        store = await open_store(f"sqlite://{tmp_path / 'admin.db'}")
        app = AdminApp(config, store=store)
        await app.startup()

        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            rec = _Recorder()
            headers = [(b"host", b"admin"), (b"authorization", f"Bearer {token}".encode())]
            payload = b"" if body is None else json.dumps(body).encode()
            await app.handle(Request(method, path, "", 11, headers, payload, True), rec)  # type: ignore[arg-type]
            return rec.status, json.loads(rec.body)

        try:
            status, t = await call("POST", "/admin/v1/tenants", {"id": "acme", "allowed_regions": ["eu"]})
            assert status == 201 and t["allowed_regions"] == ["eu"] and t["required_tags"] == []
            status, k = await call("POST", "/admin/v1/keys", {"tenant": "acme", "required_tags": ["gdpr"]})
            assert status == 201 and k["key"]["required_tags"] == ["gdpr"] and k["key"]["allowed_regions"] is None
            key_id = k["key"]["id"]
            stored = await store.get_key(key_id)
            assert stored.required_tags == ["gdpr"] and stored.allowed_regions is None
            status, k2 = await call("PATCH", f"/admin/v1/keys/{key_id}", {"allowed_regions": ["eu", "fr"]})
            assert status == 200 and k2["allowed_regions"] == ["eu", "fr"]
            status, k2 = await call("PATCH", f"/admin/v1/keys/{key_id}", {"allowed_regions": None})
            assert status == 200 and k2["allowed_regions"] is None
            for bad in ({"allowed_regions": []}, {"allowed_regions": [""]}, {"required_tags": [""]},
                        {"allowed_regions": "eu"}):
                status, err = await call("PATCH", f"/admin/v1/keys/{key_id}", bad)
                assert status == 400 and err["error"]["code"] == "invalid_argument", (bad, err)
            status, err = await call("POST", "/admin/v1/tenants", {"id": "x", "allowed_regions": []})
            assert status == 400 and err["error"]["param"] == "allowed_regions"
            status, t = await call("GET", "/admin/v1/tenants/cfg")
            assert (t["allowed_regions"], t["required_tags"]) == (["eu"], ["gdpr"])
            # a key made for the config tenant mirrors it into the store with its residency
            status, _ = await call("POST", "/admin/v1/keys", {"tenant": "cfg"})
            assert status == 201
            mirrored = await store.get_tenant("cfg")
            assert (mirrored.allowed_regions, mirrored.required_tags) == (["eu"], ["gdpr"])
        finally:
            await app.shutdown()
            await store.close()

    asyncio.run(asyncio.wait_for(go(), 60))


def test_a_residency_built_directly_is_not_interned() -> None:
    a = Residency(frozenset({"eu"}), frozenset())
    assert a is not EU and a.text == EU.text  # built directly: not interned (callers use ``residency``)


def test_cli_flags_become_the_api_fields() -> None:
    import argparse

    from gateway.admin import cli

    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    sent: list[tuple[str, str, dict[str, Any]]] = []

    class Client:
        def call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
            sent.append((method, path, body))
            return {"id": "x", "api_key": "gw-x", "key": {"id": "x", "tenant": "acme"}}

    for argv, handler in (
        (["keys", "create", "--tenant", "acme", "--region", "eu", "--region", "fr", "--required-tag", "gdpr",
          "--json"], cli.keys_create),
        (["keys", "update", "abcdefghijkl", "--any-region", "--json"], cli.keys_update),
        (["tenants", "create", "acme", "--region", "eu", "--json"], cli.tenants_create),
        (["tenants", "update", "acme", "--required-tag", "pci", "--json"], cli.tenants_update),
    ):
        handler(Client(), parser.parse_args(argv))  # type: ignore[arg-type]
    bodies = [body for _, _, body in sent]
    assert bodies[0]["allowed_regions"] == ["eu", "fr"] and bodies[0]["required_tags"] == ["gdpr"]
    assert bodies[1] == {"allowed_regions": None}
    assert bodies[2]["allowed_regions"] == ["eu"] and "required_tags" not in bodies[2]
    assert bodies[3] == {"required_tags": ["pci"]}


def test_a_residency_without_required_keys_is_refused() -> None:
    text = (EXAMPLES / "data_residency.toml").read_text().replace("required = true", "required = false")
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    assert "tenants.acme-eu: a data residency (regions, required_tags) needs [auth] required = true" in str(
        info.value
    )
