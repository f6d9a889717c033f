"""The Responses front holds back the answer's last part until the record is stored: a client that has a
response id can continue it from any node at once (no read-after-write race)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway import ir
from gateway.dialects import openai_responses as dialect
from gateway.responses.service import ResponsesFront, StoredRecord


class _Ctx:
    key = None
    error: Any = None
    status = 0


class _Client:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.disconnected = False

    def send(self, status: int, headers: Any, body: bytes) -> None:
        self.calls.append(("send", body))

    def start_stream(self, status: int, headers: Any) -> None:
        self.calls.append(("start", status))

    async def write(self, chunk: bytes) -> None:
        self.calls.append(("write", chunk))

    def end_stream(self) -> None:
        self.calls.append(("end", None))

    def text(self) -> str:
        return "".join(c[1].decode() for c in self.calls if c[0] in ("send", "write"))


class _SlowService:
    """A store whose write returns only when the test lets it."""

    def __init__(self) -> None:
        self.called = asyncio.Event()
        self.release = asyncio.Event()
        self.saved: list[tuple[str, str, StoredRecord]] = []

    async def save(self, tenant: str, response_id: str, record: StoredRecord) -> None:
        self.called.set()
        await self.release.wait()
        self.saved.append((tenant, response_id, record))


def _front(stream: bool) -> tuple[ResponsesFront, _Client, _SlowService, dialect.OpenAIResponses]:
    decoded = dialect.decode_request(json.dumps({"model": "m", "input": "hi", "stream": stream}).encode())
    per_request = dialect.OPENAI_RESPONSES.for_request(decoded, [], 1)
    client, service = _Client(), _SlowService()
    return ResponsesFront(service, _Ctx(), client, per_request), client, service, per_request  # type: ignore[arg-type]


_EVENTS: list[ir.StreamEvent] = [
    ir.MessageStart("u", "m"), ir.BlockStart(0, "text"), ir.BlockDelta(0, "text", "yes"), ir.BlockStop(0),
    ir.UsageUpdate(ir.Usage(3, 1)), ir.MessageStop(ir.StopReason.END_TURN),
]


def test_stream_completes_only_after_the_record_is_stored() -> None:
    async def run() -> None:
        front, client, service, per_request = _front(True)
        front.start_stream(200, [("content-type", "text/event-stream")])
        encoder = per_request.stream_encoder(None, 0)
        data = b"".join(encoder.encode(e) for e in _EVENTS)
        assert encoder.done
        writing = asyncio.create_task(front.write(data))
        await asyncio.wait_for(service.called.wait(), 10)
        assert "response.output_text.done" in client.text()
        assert "response.completed" not in client.text()  # not before the store has it
        service.release.set()
        await asyncio.wait_for(writing, 10)
        assert client.text().rstrip().split("\n")[-2] == "event: response.completed"
        front.end_stream()
        await front.complete()
        assert client.calls[-1] == ("end", None)
        (tenant, rid, record), = service.saved
        assert rid == per_request.response_id and tenant == "-"
        assert record.conversation[-1] == ir.Message("assistant", [ir.TextPart("yes")])

    asyncio.run(run())


def test_whole_answer_is_sent_only_after_the_record_is_stored() -> None:
    async def run() -> None:
        front, client, service, per_request = _front(False)
        body = per_request.encode_response(ir.Response("u", "m", [ir.TextPart("yes")], ir.StopReason.END_TURN), 0)
        front.send(200, [("content-type", "application/json")], body)
        completing = asyncio.create_task(front.complete())
        await asyncio.wait_for(service.called.wait(), 10)
        assert client.calls == []  # nothing before the store has it
        service.release.set()
        await asyncio.wait_for(completing, 10)
        assert client.calls == [("send", body)]
        assert bytes(service.saved[0][2].response) == body

    asyncio.run(run())


# -- input_items pages -------------------------------------------------------------------------------------


def test_input_items_pages() -> None:
    from gateway import errors
    from gateway.responses.service import _list_page

    items = [{"id": f"i{n}", "type": "message"} for n in range(5)]

    def page(query: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(_list_page(items, query))
        return result

    first = page("limit=2")
    assert [i["id"] for i in first["data"]] == ["i4", "i3"]  # newest first by default
    assert first["has_more"] and first["first_id"] == "i4" and first["last_id"] == "i3"
    second = page("limit=2&after=i3")
    assert [i["id"] for i in second["data"]] == ["i2", "i1"] and second["has_more"]
    last = page("limit=2&after=i1")
    assert [i["id"] for i in last["data"]] == ["i0"] and not last["has_more"]
    assert [i["id"] for i in page("order=asc&limit=3")["data"]] == ["i0", "i1", "i2"]
    assert [i["id"] for i in page("order=asc&before=i3&limit=2")["data"]] == ["i1", "i2"]
    assert page("")["data"] == items[::-1] and not page("")["has_more"]
    for bad in ("limit=0", "limit=101", "limit=x", "order=up", "after=nope"):
        try:
            page(bad)
        except errors.BadRequest:
            continue
        raise AssertionError(f"{bad} was accepted")


# -- config -------------------------------------------------------------------------------------------------


def test_retention_config_and_the_example() -> None:
    from pathlib import Path

    from gateway.config import ConfigError, load_config, load_config_text

    assert load_config_text("", "g.toml").responses.retention == 30 * 86400
    assert load_config_text("[responses]\nretention = 60\n", "g.toml").responses.retention == 60
    try:
        load_config_text("[responses]\nretention = 0\n", "g.toml")
    except ConfigError as exc:
        assert any("responses.retention" in e for e in exc.errors), exc.errors
    else:
        raise AssertionError("retention = 0 was accepted")
    example = load_config(Path(__file__).resolve().parents[2] / "examples" / "responses.toml")
    assert example.responses.retention == 7 * 86400 and "mock-1" in example.models


# -- previous_response_id ------------------------------------------------------------------------------------


def test_previous_conversation_is_loaded_per_tenant_and_bounded(tmp_path: Any, monkeypatch: Any) -> None:
    import msgspec
    import pytest

    from gateway import errors
    from gateway.responses import service as svc
    from gateway.store.factory import StoreOptions

    class _Config:
        store = StoreOptions(url=f"sqlite://{tmp_path / 'gw.db'}")

        class responses:
            retention = 60.0

    class _Key:
        def __init__(self, tenant: str) -> None:
            self.tenant = type("T", (), {"id": tenant})()

    def ctx_for(tenant: str, body: dict[str, Any]) -> Any:
        c = _Ctx()
        c.key = _Key(tenant)  # type: ignore[assignment]
        c.body = json.dumps({"model": "m", **body}).encode()  # type: ignore[attr-defined]
        c.dialect = None  # type: ignore[attr-defined]
        return c

    async def run() -> None:
        service = svc.ResponsesService(_Config())
        try:
            earlier = [ir.Message("user", [ir.TextPart("first")]), ir.Message("assistant", [ir.TextPart("ok")])]
            record = StoredRecord(msgspec.Raw(b"{}"), [], earlier, "m")
            await service.save("acme", "resp_prev", record)
            ctx = ctx_for("acme", {"input": "next", "previous_response_id": "resp_prev", "instructions": "be nice"})
            await service.front(ctx, _Client())  # type: ignore[arg-type]
            req = ctx.dialect.decode_request(b"")
            assert [m.role for m in req.messages] == ["system", "user", "assistant", "user"]
            assert req.messages[1:3] == earlier
            with pytest.raises(errors.NotFound):  # another tenant's id: not found
                await service.front(ctx_for("globex", {"input": "x", "previous_response_id": "resp_prev"}),
                                    _Client())  # type: ignore[arg-type]
            monkeypatch.setattr(svc, "MAX_CONVERSATION_BYTES", 64)
            with pytest.raises(errors.BadRequest) as info:
                await service.front(ctx_for("acme", {"input": "x", "previous_response_id": "resp_prev"}),
                                    _Client())  # type: ignore[arg-type]
            assert info.value.code == "conversation_too_large"
        finally:
            await service.close()

    asyncio.run(run())
