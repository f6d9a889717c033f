"""The per-worker key table and the access phase, in process (the integration tests drive real servers)."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import pytest

from gateway import errors
from gateway.auth.access import AccessPhase
from gateway.auth.keyformat import Digester, digest, format_key, generate, generate_secret
from gateway.auth.table import KeyTable, ModelRule
from gateway.config.schema import StaticKeyConfig, TenantConfig
from gateway.store.models import ApiKey, Snapshot, Subscription, Tenant

NOW = time.time()


def api_key(key_id: str, secret: str, **kw: Any) -> ApiKey:
    fields: dict[str, Any] = dict(id=key_id, name="k", tenant="acme", digest=digest(secret, b""),
                                  created_at=NOW, updated_at=NOW)
    fields.update(kw)
    return ApiKey(**fields)


class Service:
    """The parts of KeyService the phase uses; ``fetch`` reads from ``later`` (keys made after the table)."""

    def __init__(self, table: KeyTable, later: list[ApiKey] | None = None) -> None:
        self.table = table
        self.used: set[str] = set()
        self.later = later or []
        self.fetched: list[str] = []
        #: False: the store is unreachable (``fetch`` answers that it could not ask it)
        self.store_up = True

    async def fetch(self, key_id: str) -> bool:
        self.fetched.append(key_id)
        if not self.store_up:
            return False
        for k in self.later:
            if k.id == key_id:
                self.table.add(k, None)
        return True


class Request:
    def __init__(self, headers: dict[bytes, bytes]) -> None:
        self._h = headers

    def header(self, name: bytes) -> bytes | None:
        return self._h.get(name)


class Fields:
    def __init__(self, model: str) -> None:
        self.model = model


class Ctx:
    def __init__(self, headers: dict[bytes, bytes], model: str = "gpt-4o", endpoint: str = "chat") -> None:
        self.request = Request(headers)
        self.fields = Fields(model)
        self.endpoint = endpoint
        self.key: Any = None
        self.prompt: str | None = None


def bearer(key: str) -> dict[bytes, bytes]:
    return {b"authorization": b"Bearer " + key.encode()}


def run_access(phase: AccessPhase, ctx: Ctx) -> Any:
    """Both steps as the engine runs them; returns the key or raises the GatewayError."""
    pending = phase.authenticate(ctx)  # type: ignore[arg-type]
    if isinstance(pending, errors.GatewayError):  # a refusal returned: the engine answers with it
        raise copy.copy(pending)
    if pending is not None:
        asyncio.run(_await(pending))
    phase.on_request(ctx)  # type: ignore[arg-type]
    return ctx.key


async def _await(aw: Any) -> Any:
    return await aw


def code_of(phase: AccessPhase, ctx: Ctx) -> tuple[int, str | None]:
    with pytest.raises(errors.GatewayError) as info:
        run_access(phase, ctx)
    return info.value.status, info.value.code


@pytest.fixture
def keys() -> dict[str, tuple[str, str]]:
    out = {}
    for name in ("plain", "narrow", "revoked", "expired", "rotated", "tenant_narrow"):
        full, key_id, secret = generate()
        out[name] = (full, key_id, secret)
    return out  # type: ignore[return-value]


def build(keys: dict[str, Any], pepper: bytes = b"") -> tuple[AccessPhase, Service, dict[str, str]]:
    made = {}
    records = []
    for name, (full, key_id, secret) in keys.items():
        extra: dict[str, Any] = {}
        if name == "narrow":
            extra = dict(allowed_models=["gpt-4o*", "mock-?"], allowed_endpoints=["chat"])
        elif name == "revoked":
            extra = dict(state="revoked", revoked_at=NOW)
        elif name == "expired":
            extra = dict(expires_at=NOW - 10)
        elif name == "tenant_narrow":
            extra = dict(tenant="small")
        records.append(api_key(key_id, secret, **extra))
        made[name] = full
    new_secret = generate_secret()
    full, key_id, old_secret = keys["rotated"]
    records = [r for r in records if r.id != key_id] + [
        api_key(key_id, new_secret, previous_digest=digest(old_secret, b""), previous_valid_until=time.time() + 3600)
    ]
    made["rotated_new"] = format_key(key_id, new_secret)
    snap = Snapshot(
        version=3,
        tenants=[Tenant(id="acme", name="Acme", created_at=NOW, updated_at=NOW),
                 Tenant(id="small", name="Small", allowed_models=["mock-1"], created_at=NOW, updated_at=NOW)],
        keys=records,
        subscriptions=[Subscription(tenant="acme", model="premium", state="pending", requested_by="t",
                                    requested_at=NOW, updated_at=NOW)],
    )
    static_secret = generate_secret()
    table = KeyTable(
        Digester(pepper), snapshot=snap,
        static_keys=[StaticKeyConfig(id="statickeyaaa", digest=digest(static_secret, b""), tenant="ops",
                                     labels={"team": "ops"})],
        static_tenants={"ops": TenantConfig(name="Ops", labels={"cost-center": "42"})},
    )
    made["static"] = format_key("statickeyaaa", static_secret)
    service = Service(table)
    phase = AccessPhase(service, frozenset({"premium", "premium-2"}))  # type: ignore[arg-type]
    return phase, service, made


def test_model_rule_globs() -> None:
    rule = ModelRule(["gpt-4o*", "claude-?", "exact"])
    assert rule.allows("gpt-4o") and rule.allows("gpt-4o-mini") and rule.allows("exact")
    assert rule.allows("claude-3") and not rule.allows("claude-35")
    assert not rule.allows("gpt-4") and not rule.allows("other")
    assert ModelRule(["*"]).allows("anything") and ModelRule(["*"]).allows_all


def test_each_outcome_has_its_code(keys: dict[str, Any]) -> None:
    phase, service, made = build(keys)
    assert run_access(phase, Ctx(bearer(made["plain"]))).id == keys["plain"][1]
    assert run_access(phase, Ctx({b"x-api-key": made["plain"].encode()})).id == keys["plain"][1]
    assert run_access(phase, Ctx({b"authorization": b"bearer  " + made["plain"].encode()})).id
    assert keys["plain"][1] in service.used

    assert code_of(phase, Ctx({})) == (401, "missing_api_key")
    assert code_of(phase, Ctx({b"authorization": b"Basic abc"})) == (401, "malformed_api_key")
    assert code_of(phase, Ctx(bearer("sk-123"))) == (401, "malformed_api_key")
    assert code_of(phase, Ctx({b"authorization": b"Bearer gw-\xff"})) == (401, "malformed_api_key")
    wrong = format_key(keys["plain"][1], generate_secret())
    assert code_of(phase, Ctx(bearer(wrong))) == (401, "invalid_api_key")
    assert code_of(phase, Ctx(bearer(made["revoked"]))) == (401, "api_key_revoked")
    assert code_of(phase, Ctx(bearer(made["expired"]))) == (401, "api_key_expired")
    assert code_of(phase, Ctx(bearer(made["narrow"]), endpoint="embeddings")) == (403, "endpoint_not_allowed")
    assert code_of(phase, Ctx(bearer(made["narrow"]), model="gpt-4")) == (403, "model_not_allowed")
    assert run_access(phase, Ctx(bearer(made["narrow"]), model="gpt-4o-mini"))
    assert code_of(phase, Ctx(bearer(made["tenant_narrow"]), model="gpt-4o")) == (403, "model_not_allowed")
    assert run_access(phase, Ctx(bearer(made["tenant_narrow"]), model="mock-1"))
    assert code_of(phase, Ctx(bearer(made["plain"]), model="premium")) == (403, "subscription_pending")
    assert code_of(phase, Ctx(bearer(made["plain"]), model="premium-2")) == (403, "subscription_required")


def test_no_message_repeats_the_key(keys: dict[str, Any]) -> None:
    phase, _, made = build(keys)
    secret = keys["plain"][2]
    for presented in (made["plain"] + "x", "gw-" + secret, format_key(keys["plain"][1], secret[:-1] + "!")):
        with pytest.raises(errors.GatewayError) as info:
            run_access(phase, Ctx(bearer(presented)))
        assert secret[:20] not in info.value.message


def test_rotation_grace(keys: dict[str, Any]) -> None:
    phase, _, made = build(keys)
    old = keys["rotated"][0]
    assert run_access(phase, Ctx(bearer(made["rotated_new"])))
    assert run_access(phase, Ctx(bearer(old)))  # within the grace period
    key = phase.service.table.keys[keys["rotated"][1]]
    key.previous_valid_until = NOW - 1  # the grace period has passed (the remembered hit is re-checked)
    phase.service.table._verified.clear()
    assert code_of(phase, Ctx(bearer(old))) == (401, "api_key_expired")


def test_static_keys_and_labels(keys: dict[str, Any]) -> None:
    phase, _, made = build(keys)
    key = run_access(phase, Ctx(bearer(made["static"])))
    assert key.source == "config" and key.tenant.id == "ops"
    assert key.labels == {"cost-center": "42", "team": "ops"}


def test_a_key_made_after_the_table_is_fetched_once(keys: dict[str, Any]) -> None:
    phase, service, _ = build(keys)
    full, key_id, secret = generate()
    service.later.append(api_key(key_id, secret))
    assert run_access(phase, Ctx(bearer(full))).id == key_id
    assert service.fetched == [key_id]
    assert run_access(phase, Ctx(bearer(full))).id == key_id
    assert service.fetched == [key_id]  # now in the table
    unknown = format_key("unknownkeyid", generate_secret())
    assert code_of(phase, Ctx(bearer(unknown))) == (401, "invalid_api_key")


def test_a_key_the_store_cannot_be_asked_about_is_not_refused_as_invalid(keys: dict[str, Any]) -> None:
    """The store down (or not open yet): a key id the worker's table does not hold may exist, so the answer
    is a 503 the client retries, not a 401 that says the key is wrong; keys the table holds still pass."""
    phase, service, made = build(keys)
    service.store_up = False
    full, key_id, secret = generate()
    service.later.append(api_key(key_id, secret))
    assert code_of(phase, Ctx(bearer(full))) == (503, "key_store_unavailable")
    assert run_access(phase, Ctx(bearer(made["static"]))).source == "config"
    service.store_up = True  # back: the key is fetched and passes; an unknown one is refused as before
    assert run_access(phase, Ctx(bearer(full))).id == key_id
    unknown = format_key("unknownkeyid", generate_secret())
    assert code_of(phase, Ctx(bearer(unknown))) == (401, "invalid_api_key")


class CountingDigester(Digester):
    """A Digester that counts its verifications (the digest a wrong key costs)."""

    __slots__ = ("verified",)

    def __init__(self, pepper: bytes) -> None:
        super().__init__(pepper)
        self.verified = 0

    def verify(self, secret: str, stored_digest: str) -> bool:
        self.verified += 1
        return super().verify(secret, stored_digest)


def _counting_phase(keys: dict[str, Any]) -> tuple[AccessPhase, CountingDigester]:
    records = [api_key(key_id, secret) for _, key_id, secret in keys.values()]
    snap = Snapshot(version=1, tenants=[], keys=records, subscriptions=[])
    digester = CountingDigester(b"")
    phase = AccessPhase(Service(KeyTable(digester, snapshot=snap)), frozenset())  # type: ignore[arg-type]
    return phase, digester


def test_a_wrong_secret_is_refused_from_memory(keys: dict[str, Any]) -> None:
    phase, digester = _counting_phase(keys)
    wrong = format_key(keys["plain"][1], generate_secret())
    assert code_of(phase, Ctx(bearer(wrong))) == (401, "invalid_api_key")
    first = digester.verified
    assert first >= 1
    for _ in range(5):  # the same wrong key again: the same answer, no digest
        assert code_of(phase, Ctx(bearer(wrong))) == (401, "invalid_api_key")
        assert code_of(phase, Ctx({b"x-api-key": wrong.encode()})) == (401, "invalid_api_key")
    assert digester.verified == first
    # the right key of the same id is not affected, and another wrong secret pays its own digest
    assert run_access(phase, Ctx(bearer(keys["plain"][0]))).id == keys["plain"][1]
    other = format_key(keys["plain"][1], generate_secret())
    before = digester.verified
    assert code_of(phase, Ctx(bearer(other))) == (401, "invalid_api_key")
    assert digester.verified > before
    # the whole header of a refused secret is remembered too: the 401 is returned, nothing raised
    assert isinstance(phase.authenticate(Ctx(bearer(other))), errors.Unauthorized)  # type: ignore[arg-type]
    assert b"Bearer " + other.encode() in phase.service.table._refused
    # unknown key ids are never remembered as refused: a key made later must still be fetched
    unknown = format_key("unknownkeyid", generate_secret())
    assert code_of(phase, Ctx(bearer(unknown))) == (401, "invalid_api_key")
    assert unknown.encode() not in phase.service.table._refused
    assert b"Bearer " + unknown.encode() not in phase.service.table._refused
    with pytest.raises(errors.Unauthorized):  # raised: asking the store is not done yet
        run_access(phase, Ctx(bearer(unknown)))


def test_refused_keys_are_forgotten_with_the_table(keys: dict[str, Any]) -> None:
    phase, digester = _counting_phase(keys)
    wrong = format_key(keys["plain"][1], generate_secret())
    assert code_of(phase, Ctx(bearer(wrong))) == (401, "invalid_api_key")
    # the key's secret changes in the store: the rebuilt table knows nothing of the old refusal
    full, key_id, _ = keys["plain"]
    secret = wrong.split("-", 2)[2]
    snap = Snapshot(version=2, tenants=[], keys=[api_key(key_id, secret)], subscriptions=[])
    phase.service.table = KeyTable(digester, snapshot=snap)
    assert run_access(phase, Ctx(bearer(wrong))).id == key_id
    assert code_of(phase, Ctx(bearer(full))) == (401, "invalid_api_key")


def test_the_memory_of_refused_keys_is_bounded(keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.auth.table as table_module

    monkeypatch.setattr(table_module, "_MAX_REFUSED", 3)
    phase, _ = _counting_phase(keys)
    for _ in range(10):
        wrong = format_key(keys["plain"][1], generate_secret())
        assert code_of(phase, Ctx(bearer(wrong))) == (401, "invalid_api_key")
        assert len(phase.service.table._refused) <= 3


def test_hmac_digests_with_a_pepper() -> None:
    full, key_id, secret = generate()
    pepper = b"pepper!"
    k = api_key(key_id, secret, digest=digest(secret, pepper))
    snap = Snapshot(version=1, tenants=[], keys=[k], subscriptions=[])
    phase = AccessPhase(Service(KeyTable(Digester(pepper), snapshot=snap)), frozenset())  # type: ignore[arg-type]
    assert run_access(phase, Ctx(bearer(full))).id == key_id
    phase = AccessPhase(Service(KeyTable(Digester(b""), snapshot=snap)), frozenset())  # type: ignore[arg-type]
    assert code_of(phase, Ctx(bearer(full))) == (401, "invalid_api_key")
