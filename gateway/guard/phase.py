"""The guardrails phase (``guard_in``) and its way out: prompts checked and masked before anything is
sent, answers checked, masked and restored before the client sees them.

    hook           | does
    ---------------+-------------------------------------------------------------------------------
    on_request     | the request's Guard (its policies merged, kept per key, tenant and model); shape
                   | (messages, roles); the prompt's scan: block (400), mask (ctx.body rewritten: the
                   | provider never sees the value), log; injection score; then, when needed, the
                   | counted prompt tokens and the webhooks (awaited)
    on_response    | a whole answer: scanned (block, mask, log), tool arguments and structured output
                   | checked, placeholders restored
    on_stream      | a ChatStreamGuard over the stream (sliding window across chunks)

What a request carries to its way out is on the request itself (``ctx.guard``: None, its Guard alone, or
a GuardState), so nothing is kept per request in the phase and there is no settle hook to forget it.

# PERF: a request no policy applies to costs one dict lookup (the guard of its key, tenant and model);
a guarded request whose body has no trigger (a ``plain`` guard: nothing else to check on the way in)
costs one pass of the compiled prefilter over its bytes (``gateway._core._scan``) and one over its
answer's: the body is not decoded nor copied, and the request carries no state but its guard. When only
the gateway's policies apply, every request has the same guard, and a compiled gate
(``gateway._core.guardgate``) is the phase's ``on_request`` and ``on_response``: that common case costs
no Python frame, and the gate hands anything else to this phase (``_check``, ``_respond``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import msgspec

from gateway import errors
from gateway._core.guardgate import Gate
from gateway.aio import within
from gateway.errors import GatewayError
from gateway.guard.config import GuardPolicy, GuardrailsConfig, names
from gateway.guard.masking import Masker, apply
from gateway.guard.policy import Guard, blocked
from gateway.guard.stream import OPENAI_CHAT, SHAPES, ChatStreamGuard
from gateway.phases import Phase, Reply, StreamObserver

if TYPE_CHECKING:
    from gateway.context import Context

__all__ = ["GuardPhase", "GuardState"]

log = logging.getLogger("gateway.guard")

#: memoised guards by (key id, tenant id, model); cleared past this many
_MAX_MEMO = 4096


class _Role(msgspec.Struct):
    role: str = ""


_role_decoder = msgspec.json.Decoder(_Role)


class GuardState:
    """What one guarded request carries to its way out."""

    __slots__ = ("_masker", "guard", "request")

    def __init__(self, guard: Guard, masker: Masker | None, request: Any) -> None:
        self.guard = guard
        self._masker = masker  # made when first needed: most requests mask nothing
        self.request = request  # the decoded request, when an answer check needs its tools or schema

    @property
    def masker(self) -> Masker:
        masker = self._masker
        if masker is None:
            masker = self._masker = Masker()
        return masker

    def restores(self) -> bool:
        """The prompt was masked: the answer gets its values back."""
        return self._masker is not None and bool(self._masker.originals)


class GuardPhase(Phase):
    """See the module docstring."""

    name = "guard_in"
    is_async = True  # only when tokens must be counted or a webhook called; else it answers at once

    def __init__(self, config: GuardrailsConfig) -> None:
        self.config = config
        self.policies: dict[str, GuardPolicy] = dict(config.policies)
        apply_ = config.apply
        self._gateway = names(apply_.gateway)
        self._models = {k: names(v) for k, v in apply_.models.items()}
        self._tenants = {k: names(v) for k, v in apply_.tenants.items()}
        self._keys = {k: names(v) for k, v in apply_.keys.items()}
        self._memo: dict[tuple[str | None, str | None, str], Guard | None] = {}
        self._by_names: dict[tuple[str, ...], Guard] = {}
        #: only the gateway's policies apply: every request has the same guard (PERF: no memo lookup)
        self._fixed = not (self._models or self._tenants or self._keys)
        self._guard = self.guard_for(None, None, "") if self._fixed else None
        guard = self._guard
        if guard is not None:
            # PERF: with one guard for every request, the compiled gate is the phase's way in and out: a
            # prompt and an answer with no trigger cost the two prefilter passes and no Python frame; the
            # gate hands anything else to this phase (``_check``, ``_respond``)
            gate = Gate(guard, guard.in_scanner.prefilter if guard.in_scanner is not None else None,
                        guard.out_scanner.prefilter if guard.out_scanner is not None else None,
                        guard.plain, guard.out_always, self._check, self._respond)
            self.on_request = gate.on_request  # type: ignore[method-assign]
            self.on_response = gate.on_response  # type: ignore[method-assign]

    # -- which policies apply ------------------------------------------------------------------------

    def guard_for(self, key_id: str | None, tenant: str | None, model: str) -> Guard | None:
        memo = (key_id, tenant, model)
        guard = self._memo.get(memo, False)
        if guard is not False:
            return guard  # type: ignore[return-value]
        chosen: list[str] = []
        for group in (self._gateway, self._models.get(model, ()), self._tenants.get(tenant or "", ()),
                      self._keys.get(key_id or "", ())):
            chosen.extend(n for n in group if n not in chosen)
        found: Guard | None = None
        if chosen:
            key = tuple(chosen)
            found = self._by_names.get(key)
            if found is None:
                found = self._by_names[key] = Guard([(n, self.policies[n]) for n in chosen])
        if len(self._memo) >= _MAX_MEMO:
            self._memo.clear()
        self._memo[memo] = found
        return found

    # -- the request ---------------------------------------------------------------------------------

    def on_request(self, ctx: Context) -> Reply | GatewayError | Awaitable[Reply | None] | None:
        fields = ctx.fields
        messages = getattr(fields, "messages", None)
        if messages is None:  # not a chat request: nothing to guard here
            return None
        if self._fixed:
            guard = self._guard
        else:
            key = ctx.key
            kid, tid = (key.id, key.tenant.id) if key is not None else (None, None)
            memo = self._memo
            which = (kid, tid, fields.model)
            guard = memo[which] if which in memo else self.guard_for(kid, tid, fields.model)
        if guard is None:
            return None
        scan = guard.in_scan
        mask = scan(ctx.body) if scan is not None else 0
        if not mask and guard.plain:
            # PERF: the common case: no trigger in the prompt and nothing else to check; the body is
            # neither decoded nor copied, and the request carries its guard alone (or nothing)
            if guard.out_scanner is not None:
                ctx.guard = guard
            return None
        return self._check(ctx, guard, messages, mask)

    def _check(self, ctx: Context, guard: Guard, messages: list[Any], mask: int
               ) -> Reply | GatewayError | Awaitable[Reply | None] | None:
        """``on_request`` past the fast path: the shape, the prompt's scan (``mask``: its prefilter's
        triggers), the injection score, the state for the way out, then what must be awaited."""
        if guard.shaped:
            refusal = self._shape(guard, messages)
            if refusal is not None:
                return refusal
        masker: Masker | None = None
        scanner = guard.in_scanner
        if scanner is not None:
            # PERF: the prefilter read the raw body once (on_request); with no trigger in it the body is
            # neither decoded nor copied, and goes upstream as the client sent it
            if mask or scanner.always:
                text = ctx.body.decode("utf-8", "surrogateescape")
                findings = scanner.scan(text, mask)
                if findings:
                    assert guard.input is not None
                    masker = Masker()
                    masked = apply(text, findings, guard.input, masker, ctx.request_id, "prompt")
                    if masked is not text:
                        ctx.body = masked.encode("utf-8", "surrogateescape")
        if guard.injection is not None:
            score = guard.injection_score(messages)
            if score >= guard.injection_threshold and guard.injection_action != "off":
                log.warning("guardrail injection score %.2f: request %s", score, ctx.request_id)
                if guard.injection_action == "block":
                    assert guard.injection_error is not None
                    return guard.injection_error
        if (masker is not None and masker.originals) or guard.checks_answer:
            state = GuardState(guard, masker, None)
            if guard.checks_answer:
                state.request = msgspec.json.decode(ctx.body)
            ctx.guard = state
        elif guard.out_scanner is not None:
            ctx.guard = guard  # PERF: the answer is scanned; nothing else is carried
        needs_count = guard.max_prompt_tokens is not None and len(ctx.body) > guard.max_prompt_tokens
        if needs_count or guard.webhooks:
            return self._later(ctx, guard, messages, needs_count)
        return None

    @staticmethod
    def _shape(guard: Guard, messages: list[Any]) -> GatewayError | None:
        if guard.max_messages is not None and len(messages) > guard.max_messages:
            return errors.BadRequest(
                f"The request has {len(messages)} messages; the guardrail policy allows "
                f"{guard.max_messages}.",
                param="messages", code="guardrail_max_messages")
        roles = guard.allowed_roles
        if roles is not None:
            for i, raw in enumerate(messages):
                try:
                    role = _role_decoder.decode(raw).role
                except msgspec.DecodeError:
                    role = ""
                if role not in roles:
                    return errors.BadRequest(
                        f"messages[{i}] has the role {role!r}, which the guardrail policy does not allow "
                        f"(allowed: {', '.join(sorted(roles))}).",
                        param=f"messages[{i}].role", code="guardrail_role")
        return None

    async def _later(self, ctx: Context, guard: Guard, messages: list[Any], count: bool) -> Reply | None:
        if count:
            assert guard.max_prompt_tokens is not None
            decoded = [msgspec.json.decode(m) for m in messages]
            tokens = await _shared.counter().count_messages(ctx.fields.model, decoded)
            if tokens > guard.max_prompt_tokens:
                raise errors.BadRequest(
                    f"The prompt has {tokens} tokens; the guardrail policy allows {guard.max_prompt_tokens}.",
                    param="messages", code="guardrail_max_prompt_tokens")
        for policy, hook in guard.webhooks:
            await self._webhook(ctx, policy, hook)
        return None

    async def _webhook(self, ctx: Context, policy: str, hook: Any) -> None:
        import httpx

        key = ctx.key
        payload = {"direction": "input", "model": ctx.fields.model, "request_id": ctx.request_id,
                   "key_id": key.id if key is not None else None,
                   "tenant": key.tenant.id if key is not None else None,
                   "body": msgspec.Raw(ctx.body)}
        try:
            resp = await within(
                _shared.http().post(hook.url, content=msgspec.json.encode(payload),
                                headers={"content-type": "application/json", **hook.headers}),
                hook.timeout)
            if resp.status_code >= 300:
                raise ValueError(f"answered {resp.status_code}")
            verdict = msgspec.json.decode(resp.content)
            action = verdict.get("action") if isinstance(verdict, dict) else None
            if action not in ("allow", "block"):
                raise ValueError("answered no action")
        except (TimeoutError, httpx.HTTPError, ValueError, msgspec.DecodeError) as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else f"failed ({exc})"
            log.warning("guardrail webhook of policy %s %s: request %s, %s", policy, what, ctx.request_id,
                        hook.failure)
            if hook.failure == "fail_closed":
                raise errors.ServiceUnavailable(
                    f"The guardrail service of policy {policy!r} {what}; the request was not sent.",
                    code="guardrail_unavailable") from None
            return
        if action == "block":
            reason = verdict.get("reason")
            log.warning("guardrail webhook of policy %s blocked request %s", policy, ctx.request_id)
            raise errors.BadRequest(
                f"The prompt was blocked by the gateway's guardrail policy {policy!r} (webhook"
                + (f": {reason}" if isinstance(reason, str) else "") + ").",
                code="guardrail_webhook")

    # -- the way out ---------------------------------------------------------------------------------

    def on_response(self, ctx: Context, body: bytes) -> bytes:
        state = ctx.guard
        if state is None:
            return body
        return self._respond(ctx, body)

    def _respond(self, ctx: Context, body: bytes) -> bytes:
        """A whole answer of a request that carries a guard state (``ctx.guard``)."""
        state = ctx.guard
        if type(state) is Guard:
            scan = state.out_scan
            assert scan is not None
            if not scan(body) and not state.out_always:
                return body  # PERF: nothing to find: the answer as it came, not decoded
            state = ctx.guard = GuardState(state, None, None)
        assert isinstance(state, GuardState)
        guard = state.guard
        scanner = guard.out_scanner
        mask = scanner.prefilter.scan(body) if scanner is not None else 0
        if not mask and not state.restores() and (scanner is None or not scanner.always):
            # PERF: nothing to find, nothing to restore: the answer as it came, not decoded
            if state.request is not None:
                _check_answer(guard, state.request, body)
            return body
        masker = state.masker
        text = body.decode("utf-8", "surrogateescape")
        out = text
        if scanner is not None:
            findings = scanner.scan(text, mask)
            if findings:
                _no_store(ctx)
                out = apply(text, findings, guard.output, masker, ctx.request_id, "answer")
        if state.request is not None:
            _check_answer(guard, state.request, body)
        out = masker.restore(out)
        if out is text:
            return body
        _no_store(ctx)
        return out.encode("utf-8", "surrogateescape")

    def on_stream(self, ctx: Context) -> StreamObserver | None:
        state = ctx.guard
        if state is None:
            return None
        if type(state) is Guard:
            state = ctx.guard = GuardState(state, None, None)
        assert isinstance(state, GuardState)
        _no_store(ctx)
        side = state.guard.output if state.guard.output else None
        dialect: Any = getattr(ctx, "dialect", None)  # None: OpenAI chat
        shape = SHAPES.get(dialect.name) if dialect is not None else OPENAI_CHAT
        if shape is None:  # a dialect whose stream the guard cannot read: its text is not checked
            log.warning("guardrails: the %s stream of request %s is not checked", dialect.name,
                        ctx.request_id)
            return None
        return ChatStreamGuard(side, state.masker, ctx.request_id, shape)


class _Shared:
    """What every guard phase of the worker shares, made on first use and kept across reloads (a reload
    builds new phases): the webhook client (its keep-alive connections) and the token counter (its
    thread)."""

    __slots__ = ("_counter", "_http")

    def __init__(self) -> None:
        self._counter: Any = None
        self._http: Any = None

    def counter(self) -> Any:
        if self._counter is None:
            from gateway.limits.tokens import TokenCounter

            self._counter = TokenCounter()
        return self._counter

    def http(self) -> Any:
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient()
        return self._http


_shared = _Shared()


def _no_store(ctx: Context) -> None:
    """An answer the guard changed (or that carries placeholders of this request) is not cached."""
    if ctx.cache is not None:
        from gateway.cache.phase import answer_changed

        answer_changed(ctx)


def _check_answer(guard: Guard, request: Any, body: bytes) -> None:
    """Tool-call arguments and structured output of a whole answer, against what the request declared."""
    try:
        answer = msgspec.json.decode(body)
        message = answer["choices"][0]["message"]
    except (msgspec.DecodeError, KeyError, IndexError, TypeError):
        return
    if guard.tool_arguments != "off":
        tools = {t.get("function", {}).get("name"): t.get("function", {}).get("parameters")
                 for t in request.get("tools") or () if isinstance(t, dict)}
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            problem = _json_problem(fn.get("arguments"), tools.get(fn.get("name")), object_only=True)
            if problem is not None:
                _answer_problem(guard.tool_arguments, "tool_arguments",
                                f"tool call {fn.get('name')!r}: {problem}")
    if guard.json_schema != "off":
        rf = request.get("response_format") or {}
        schema = (rf.get("json_schema") or {}).get("schema") if rf.get("type") == "json_schema" else None
        if schema is not None and message.get("content") is not None:
            problem = _json_problem(message.get("content"), schema, object_only=False)
            if problem is not None:
                _answer_problem(guard.json_schema, "json_schema", problem)


def _json_problem(text: Any, schema: Any, *, object_only: bool) -> str | None:
    if not isinstance(text, str):
        return "not a JSON string"
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return "not valid JSON"
    if object_only and not isinstance(value, dict):
        return "not a JSON object"
    if isinstance(schema, dict):
        import jsonschema

        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as exc:
            return f"does not match the schema ({exc.message})"
        except jsonschema.SchemaError:
            return None
    return None


def _answer_problem(action: str, check: str, problem: str) -> None:
    if action == "block":
        err = blocked("structured output", check, "answer")
        raise errors.BadRequest(f"{err.message[:-1]}: {problem}", code=err.code)
    log.info("guardrail finding: %s: %s", check, problem)
