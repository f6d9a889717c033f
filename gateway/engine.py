"""The engine: runs one request through the phase chain.

    parse -> access -> guard_in -> admit -> cache -> route -> upstream -> respond -> settle

``parse`` decodes only the fields we act on; the pre-route phases come from ``gateway.phases``;
``route`` picks the model's deployment from the runtime snapshot; ``upstream`` sends through the
provider's transport; ``respond`` relays the body (streams event by event, learning usage on the way);
``settle`` runs the phases' settle hooks and emits the call record after the response is written.

The runtime snapshot (``Runtime``) is immutable and swapped in one assignment on reload, so a request
sees one config from start to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

import msgspec

from gateway import errors
from gateway._core.http import ms_text
from gateway._core.jsoncheck import TOO_DEEP, KeyWatch
from gateway.aio import within
from gateway.app import CallbackResponder, ClientGone, Headers, Request, Responder
from gateway.config import Config, ProviderConfig, UpstreamConfig, resolve_secret
from gateway.context import Context, LiveRequests
from gateway.dialects import DIALECT_PATHS
from gateway.dialects.anthropic_messages import ANTHROPIC_MESSAGES
from gateway.dialects.base import ClientDialect
from gateway.errors import GatewayError
from gateway.image_fetch import image_phases
from gateway.observe.records import RecordSink
from gateway.observe.tracing import Tracer
from gateway.phases import PHASE_ORDER, Phase, Reply
from gateway.prompts.table import PromptSource, PromptTable
from gateway.providers.anthropic import with_sampling
from gateway.providers.azure import azure_translator
from gateway.providers.base import UpstreamError, UpstreamResponse, UpstreamTimeout
from gateway.providers.openai import OpenAITranslator
from gateway.providers.presets import base_url_of, credentials_of, quirks_of
from gateway.routing.config import HealthCheckConfig
from gateway.routing.credentials import CREDENTIAL_STATUSES, credentials_rejected
from gateway.routing.outcome import Outcome, outcome_of_exception, outcome_of_status, parse_retry_after
from gateway.routing.router import Deployment, NoDeploymentAvailable, RequestInfo, Router, build_routers
from gateway.server.cpus import worker_count
from gateway.server.pool import OriginPool
from gateway.wire import (
    MAX_JSON_DEPTH,
    EmbeddingRequest,
    decoders,
    encode,
    key_watches,
)

if TYPE_CHECKING:
    from gateway.auth.access import AccessPhase
    from gateway.auth.service import KeyService
    from gateway.cache.phase import CacheService
    from gateway.limits.admit import LimitService
    from gateway.observe.metrics import MetricsExporter
    from gateway.responses.service import ResponsesService
    from gateway.routing.health import HealthChecker
    from gateway.routing.router import Attempt, Attempts
    from gateway.routing.sync import BreakerSync

__all__ = ["Engine", "ModelEntry", "Runtime", "Target", "build_translator"]

log = logging.getLogger("gateway.engine")

_JSON_TYPE = ("content-type", "application/json")
_JSON: Headers = [_JSON_TYPE]
#: unknown model names whose 404 is kept (Runtime.unknown_model); then the set starts over
_MAX_UNKNOWN = 1024
_SSE_HEADERS: Headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
_ACCEPTED_TYPES = (b"application/json", b"application/x-www-form-urlencoded")
_DONE = b"data: [DONE]\n\n"
_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}
#: the Responses API's endpoint: its POST is run by the Responses front (gateway.responses.service)
_RESPONSES = "responses"
_INTERNAL = errors.error_body("internal error", "server_error", "internal_error")
#: ``Engine._front`` waits: (the awaitable, where to resume)
_Step = tuple[Awaitable[Any], int]
_perf = time.perf_counter
_monotonic = time.monotonic
_INF = float("inf")


class Target:
    """One deployment as the engine sends to it: the provider's translator and the upstream model id."""

    __slots__ = ("deployment", "name", "provider", "rewrite_model", "translator", "upstream_model")

    def __init__(self, model: str, name: str, provider: str, upstream_model: str,
                 translator: OpenAITranslator) -> None:
        self.name = name
        self.provider = provider
        self.upstream_model = upstream_model
        self.translator = translator
        self.rewrite_model = upstream_model != model and not translator.model_in_path


class ModelEntry:
    """One model clients may name, in the runtime snapshot."""

    __slots__ = ("endpoints", "name", "owned_by", "router", "target", "targets")

    def __init__(self, name: str, endpoints: frozenset[str], owned_by: str) -> None:
        self.name = name
        self.endpoints = endpoints
        self.owned_by = owned_by
        #: a model proxied directly (one provider, no routing policy): its one target; else None
        self.target: Target | None = None
        #: the model's router and its targets by deployment id, for every model (fallbacks use them)
        self.router: Router | None = None
        self.targets: dict[str, Target] = {}


class Runtime:
    """Immutable tables the hot path reads, compiled from one Config."""

    def __init__(self, config: Config, translators: dict[str, OpenAITranslator], phases: Sequence[Phase],
                 previous: Runtime | None = None):
        self.config = config
        self.translators = translators
        self.models: dict[str, ModelEntry] = {}
        routings = {name: m.routing() for name, m in config.models.items()}
        workers = worker_count(config.server.workers)
        self.routers: dict[str, Router] = build_routers(
            routings, workers=workers, previous=previous.routers if previous is not None else None
        )
        for name, m in config.models.items():
            entry = self.models[name] = ModelEntry(name, _served_endpoints(m.endpoints), m.owned_by)
            router = entry.router = self.routers[name]
            for d in router.deployments:
                entry.targets[d.id] = Target(
                    name, d.name, d.provider, d.upstream_model,
                    with_sampling(translators[d.provider].for_model(d.upstream_model), m.sampling),
                )
            if m.direct():
                entry.target = next(iter(entry.targets.values()))
        by_name: dict[str, list[Phase]] = {n: [] for n in PHASE_ORDER}
        for p in phases:
            if p.name not in by_name:
                raise ValueError(f"unknown phase name {p.name!r}; expected one of {PHASE_ORDER}")
            by_name[p.name].append(p)
        # PERF: the chain holds only phases that exist; an empty seam costs nothing
        self.chain: tuple[Phase, ...] = tuple(p for n in PHASE_ORDER for p in by_name[n])
        # PERF: only phases that have something to do after the response are called then
        self.settle_chain = tuple(p for p in self.chain if type(p).on_settle is not Phase.on_settle)
        # PERF: the way out, in reverse order, only phases that look at it (see gateway.phases)
        self.response_chain = tuple(p for p in reversed(self.chain)
                                    if type(p).on_response is not Phase.on_response)
        self.stream_chain = tuple(p for p in reversed(self.chain) if type(p).on_stream is not Phase.on_stream)
        self.overhead_header = config.server.overhead_header
        created = int(time.time())
        self.models_body = encode({
            "object": "list",
            "data": [self._model_obj(e, created) for e in self.models.values()],
        })
        self.model_bodies = {n: encode(self._model_obj(e, created)) for n, e in self.models.items()}
        #: the 404 of each unknown model name asked for, built once (bounded: _MAX_UNKNOWN names)
        self.unknown_models: dict[str, GatewayError] = {}
        #: the prompts published as APIs (gateway.prompts); None when the config has none
        self.prompts = PromptTable.build(config)

    def unknown_model(self, name: str) -> GatewayError:
        """The answer to a request for a model this config does not have (never raised: shared)."""
        err = self.unknown_models.get(name)
        if err is None:
            if len(self.unknown_models) >= _MAX_UNKNOWN:
                self.unknown_models.clear()
            err = self.unknown_models[name] = errors.NotFound(
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model", code="model_not_found",
            )
        return err

    @staticmethod
    def _model_obj(e: ModelEntry, created: int) -> dict[str, Any]:
        return {"id": e.name, "object": "model", "created": created, "owned_by": e.owned_by}


def _overhead_ms(ctx: Context) -> str:
    """The gateway's own time so far (total minus upstream wait), in ms, as the header value."""
    # PERF: integer microseconds formatted by the core; round(x, 3) costs ~0.7 us here, repr ~0.5 us
    ctx.overhead = s = ms_text(int((_perf() - ctx.t0) * 1e6 - ctx.up_ms * 1e3))
    return s


class _RequestIds:
    """Request ids: a random per-process prefix and a counter (# PERF: uuid4() costs ~5 us here)."""

    __slots__ = ("n", "prefix")

    def __init__(self) -> None:
        self.prefix = uuid.uuid4().hex[:12]
        self.n = 0

    def next(self) -> str:
        self.n = n = self.n + 1
        return f"{self.prefix}{n}"  # PERF: decimal; a format spec such as :08x costs ~0.4 us more


def build_translator(name: str, p: ProviderConfig, defaults: UpstreamConfig) -> OpenAITranslator:
    """The provider's translator with its transport (a pool per worker, or the in-process mock)."""
    translator = _translator(name, p, defaults)
    if p.forward_headers is not None:  # else the translator's own default list
        translator.forward_headers(p.forward_headers)
    return translator


def _translator(name: str, p: ProviderConfig, defaults: UpstreamConfig) -> OpenAITranslator:
    if p.type == "mock":
        from gateway.providers.mock import MockTransport

        mock = OpenAITranslator(name, MockTransport(p.mock), "/v1", None, p.headers)
        mock.secrets = credentials_of(p)
        return mock
    from gateway.server.pool import OriginPool

    if p.type == "anthropic" and p.base_url is None:
        from gateway.providers.anthropic import DEFAULT_BASE_URL

        base_url = DEFAULT_BASE_URL
    elif p.type in ("gemini", "vertex"):
        from gateway.providers.gemini import default_base_url

        base_url = default_base_url(p)
    else:
        base_url = base_url_of(p)
    pool = OriginPool(
        base_url,
        pool_size=p.pool_size or defaults.pool_size,
        connect_timeout=p.connect_timeout or defaults.connect_timeout,
        read_timeout=p.read_timeout or defaults.read_timeout,
        pool_timeout=defaults.pool_timeout,
        idle_timeout=defaults.idle_timeout,
        verify_tls=defaults.verify_tls if p.verify_tls is None else p.verify_tls,
        ca_file=p.ca_file or defaults.ca_file,
        max_answer_bytes=p.max_answer_bytes or defaults.max_answer_bytes,
    )
    translator: OpenAITranslator
    if p.type == "azure":
        translator = azure_translator(name, p, pool, pool.prefix)
    elif p.type == "bedrock":
        from gateway.providers.bedrock import bedrock_translator

        translator = bedrock_translator(name, p, pool)
    elif p.type == "cohere":
        from gateway.providers.cohere import CohereTranslator

        key = resolve_secret(p.api_key) if p.api_key else None
        translator = CohereTranslator(name, pool, pool.prefix, key, p.headers)
    elif p.type == "anthropic":
        from gateway.providers.anthropic import AnthropicTranslator

        key = resolve_secret(p.api_key) if p.api_key else None
        translator = AnthropicTranslator(name, pool, pool.prefix, key, p.headers, p.anthropic_version, p.beta,
                                         p.sampling or "all")
    elif p.type in ("gemini", "vertex"):
        from gateway.providers.gemini import google_translator

        translator = google_translator(name, p, pool, pool.prefix)
    else:
        key = resolve_secret(p.api_key) if p.api_key else None
        translator = OpenAITranslator(name, pool, pool.prefix, key, p.headers, quirks=quirks_of(p))
    translator.secrets = credentials_of(p)
    return translator


class Engine:
    """The gateway application (``gateway.app.App``). One per worker process."""

    def __init__(
        self,
        config: Config,
        *,
        phases: Sequence[Phase] = (),
        phase_factory: Callable[[Config], Sequence[Phase]] | None = None,
        records: RecordSink | None = None,
        worker: int | None = None,
    ) -> None:
        self._config = config
        self._phase_factory = phase_factory
        self._static_phases = tuple(phases)
        self.worker = worker if worker is not None else os.getpid()
        self.records = records or RecordSink.for_config(config, self.worker)
        #: OpenTelemetry spans ([tracing]); None when off: one check per request (gateway.observe.tracing)
        self.tracer = Tracer.for_config(config, self.worker)
        self.runtime: Runtime | None = None
        self.draining = False
        self._ids = _RequestIds()
        self._retiring: set[asyncio.Task[None]] = set()
        #: requests begun and not yet recorded (``_settle``): whatever ends them, each gets its one record
        self._live = LiveRequests()
        #: set when the worker cuts its unfinished requests (``cut_unfinished``): what they are told
        self._cut_error: GatewayError | None = None
        #: the worker's key table keeper, when keys are required ([auth] required = true)
        self.keys: KeyService | None = None
        self._access: AccessPhase | None = None
        self._health: HealthChecker | None = None
        self._breakers: BreakerSync | None = None
        #: the worker's limits and budgets, when [limits] has policies or budgets
        self.limits: LimitService | None = None
        #: the worker's response cache, when [cache] is enabled
        self.cache: CacheService | None = None
        #: the Prometheus export ([metrics]): the worker's snapshot timer and the scrape endpoint
        self.metrics: MetricsExporter | None = None
        self._provider_configs: dict[str, tuple[ProviderConfig, OpenAITranslator]] = {}
        #: the Responses API's store and front (gateway.responses), made on the first /v1/responses request
        self._responses: ResponsesService | None = None
        self._prompts = PromptSource()

    # -- lifecycle -----------------------------------------------------------------------------------

    def _phases_for(self, config: Config) -> list[Phase]:
        phases = list(self._static_phases)
        if self.limits is not None:
            phases.append(self.limits.phase)
        self._access = None
        if self.keys is not None:
            from gateway.auth.access import AccessPhase

            approval = frozenset(n for n, m in config.models.items() if m.approval == "required")
            # PERF: not in the chain: the engine runs its two steps itself, the second only when the
            # key has restrictions or a model needs approval
            self._access = AccessPhase(self.keys, approval)
        phases.extend(image_phases(config))  # none unless a provider has fetch_images
        if self._phase_factory is not None:
            phases.extend(self._phase_factory(config))
        if config.guardrails.enabled and config.guardrails.policies:
            from gateway.guard.phase import GuardPhase

            phases.append(GuardPhase(config.guardrails))
        if self.cache is not None:
            phases.append(self.cache.phase)
        return phases

    async def startup(self) -> None:
        if _limits_configured(self._config):
            from gateway.limits.admit import LimitService

            self.limits = LimitService(self._config, worker=self.worker)
            await self.limits.start()
        if self._config.auth.required:
            from gateway.auth.service import KeyService

            self.keys = KeyService(self._config)
            await self.keys.start()
        if self._config.cache.enabled:
            from gateway.cache.phase import CacheService

            self.cache = CacheService(self._config, self)  # the engine: the semantic tier embeds through it
        self.runtime = self._build(self._config, {})
        self.records.start()
        if self.tracer is not None:
            self.tracer.exporter.start()
        await self._start_routing(self.runtime)
        from gateway.observe.metrics import MetricsExporter

        self.metrics = MetricsExporter.for_engine(self, self._config)
        self.metrics.start()

    # -- routing state beyond one worker: health checks and shared breakers ---------------------------

    async def _start_routing(self, runtime: Runtime) -> None:
        """Health checks for models that ask for them; breaker state shared with the node's other workers
        (and, with a Redis store, with other nodes) when a model has a breaker."""
        from gateway.routing.health import HealthChecker

        checker = HealthChecker(runtime.routers, self._probe)
        if checker.targets:
            checker.start()
            self._health = checker
        routed = [r for r in runtime.routers.values() if runtime.models[r.model].target is None]
        if self._breakers is None and any(r.config.breaker.enabled for r in routed):
            try:
                self._breakers = await _open_breaker_sync(runtime.config)
            except Exception as exc:
                log.warning("breaker state is not shared (%s); each worker keeps its own", exc)
            else:
                await self._breakers.start()
        if self._breakers is not None:
            self._breakers.attach(runtime.routers)

    async def _restart_routing(self, runtime: Runtime) -> None:
        if self._health is not None:
            await self._health.stop()
            self._health = None
        await self._start_routing(runtime)

    async def _probe(self, deployment: Deployment, config: HealthCheckConfig) -> bool:
        """One health probe: the configured request to the deployment's provider; healthy on a 2xx."""
        runtime = self.runtime
        assert runtime is not None
        translator = runtime.translators[deployment.provider]
        body = config.body.encode() if config.body is not None else b""
        method = "POST" if config.body is not None else "GET"
        resp = await within(translator.probe(method, config.path, body), config.timeout)
        try:
            answer = await within(resp.read(), config.timeout)
        finally:
            resp.close()
        if resp.status in CREDENTIAL_STATUSES:  # logged as what it is (the probe fails, as any non-2xx)
            credentials_rejected(deployment.provider, resp.status, answer, translator)
        return 200 <= resp.status < 300

    def _build(self, config: Config, old: dict[str, tuple[ProviderConfig, OpenAITranslator]]) -> Runtime:
        previous = self.runtime
        translators: dict[str, OpenAITranslator] = {}
        for name, p in config.providers.items():
            prev = old.get(name)
            if prev is not None and prev[0] == p and prev[1].secrets == credentials_of(p):
                translators[name] = prev[1]  # unchanged provider: keep its warm pool
            else:
                translators[name] = build_translator(name, p, config.upstream)
        self._provider_configs = {n: (config.providers[n], t) for n, t in translators.items()}
        return Runtime(config, translators, self._phases_for(config), previous)

    def reload(self, config: Config) -> None:
        """Swap in a new config. Raises (and keeps the old snapshot) if the new one cannot be built."""
        old = dict(self._provider_configs)
        if self.limits is not None:
            self.limits.reload(config)  # turning limits on or off entirely takes a restart
        if self.cache is not None:
            self.cache.reload(config)  # turning the cache on or off entirely takes a restart
        keys_before = self.keys
        if config.auth.required:
            if self.keys is None:
                from gateway.auth.service import KeyService

                self.keys = KeyService(config)
                self._spawn(self.keys.start())
            else:
                self.keys.reload(config)  # the store itself is opened once: changing [store] needs a restart
        elif self.keys is not None:
            self.keys = None
        try:
            runtime = self._build(config, old)
        except BaseException:
            self.keys = keys_before
            raise
        if keys_before is not None and self.keys is None:
            self._spawn(keys_before.stop())
        self._spawn(self._restart_routing(runtime))
        kept = {id(t) for t in runtime.translators.values()}
        retired = [t for _, t in old.values() if id(t) not in kept]
        self.runtime = runtime
        self._config = config
        if self._responses is not None:
            self._responses.reload(config)
        if self.metrics is not None:
            self.metrics.reload(config)
        self.records.reload(config)
        for t in retired:
            # in-flight requests may still hold the old transport: close it once they are done
            self._spawn(_close_when_idle(t))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def cut_unfinished(self, wait: float = 1.0) -> None:
        """The drain deadline has passed: end every request still running, while the clients are still
        connected. A stream gets an error event and ``data: [DONE]``, a request not yet answered a 503;
        each is recorded with the code ``worker_shutdown``. Requests running as tasks are cancelled and
        end themselves (``_guarded``); those on the callback path (waiting for an upstream's answer) are
        answered here, and the answer, if it still comes, is dropped (``_on_head``). Waits up to ``wait``
        seconds for the tasks to finish writing."""
        if not self._live:
            return
        err = self._cut_error = errors.ServiceUnavailable(
            "The gateway worker shut down before the request finished (drain deadline)",
            code="worker_shutdown",
        )
        log.warning("drain deadline passed: cutting %d unfinished request(s)", len(self._live))
        tasks = []
        for ctx in list(self._live):
            task = ctx.task
            if task is not None and not task.done():
                task.cancel()
                tasks.append(task)
            elif task is None:
                ctx.error = err
                responder = ctx.responder
                if not getattr(responder, "started", False):
                    self._send_error(ctx, responder, err)
                self._settle(ctx)
                done = getattr(responder, "done", None)
                if done is not None:
                    done()
        if tasks:
            await asyncio.wait(tasks, timeout=wait)

    def _record_unfinished(self) -> None:
        """The worker is stopping: record the requests that never ended (nothing can reach their clients
        any more)."""
        if not self._live:
            return
        log.warning("worker stopping with %d unfinished request(s); recorded as worker_shutdown",
                    len(self._live))
        err = self._cut_error or errors.ServiceUnavailable(
            "The gateway worker shut down before the request finished", code="worker_shutdown"
        )
        for ctx in list(self._live):
            if ctx.error is None:
                ctx.error = err
            if not ctx.status:
                ctx.status = err.status
            self._settle(ctx)

    async def shutdown(self) -> None:
        self._record_unfinished()
        if self.limits is not None:
            await self.limits.stop()
        if self._health is not None:
            await self._health.stop()
        if self._breakers is not None:
            await self._breakers.stop()
            await self._breakers.transport.close()
        if self.keys is not None:
            await self.keys.stop()
        if self.cache is not None:
            await self.cache.close()
        if self.runtime is not None:
            for t in self.runtime.translators.values():
                await t.close()
        await self.records.close()
        if self.tracer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.tracer.exporter.close, 4.0)
        if self._responses is not None:
            await self._responses.close()
        if self.metrics is not None:
            self.metrics.stop()  # a last snapshot: the node's sums keep what this worker counted

    # -- the request path ----------------------------------------------------------------------------

    def _context(self, request: Request, responder: Responder) -> Context:
        runtime = self.runtime
        assert runtime is not None
        rid_b = request.header(b"x-request-id")
        rid = rid_b.decode("latin-1")[:200] if rid_b else self._ids.next()
        ctx = Context(request, rid, runtime, responder)
        self._live.add(ctx)
        if self.tracer is not None:
            ctx.trace = self.tracer.begin(request)
        return ctx

    def handle(self, request: Request, responder: Responder) -> Coroutine[Any, Any, None]:
        """``gateway.app.App.handle``: the request's whole cycle as one coroutine."""
        ctx = self._context(request, responder)
        endpoint = _ENDPOINTS.get(request.path)
        prompts = self._prompt_table(ctx.runtime)
        if (prompts is not None or endpoint is None) and _prompt_request(prompts, request, endpoint):
            return self._guarded(ctx, responder, self._prompt(ctx, responder, prompts, endpoint))
        if endpoint is None or request.method != "POST":  # the gateway's own, or another dialect's
            if request.path.startswith("/v1/responses"):
                return self._guarded(ctx, responder, self._responses_local(ctx, responder))
            return self._guarded(ctx, responder, self._other(ctx, responder, endpoint))
        ctx.endpoint = endpoint
        if endpoint is _RESPONSES:
            return self._guarded(ctx, responder, self._responses_create(ctx, responder))
        return self._guarded(ctx, responder, self._proxy(ctx, responder))

    def _prompt_table(self, runtime: Runtime) -> PromptTable | None:
        """The prompts this worker serves: the config's and the published ones (gateway.prompts.table)."""
        keys = self.keys
        stored = keys.stored_prompts if keys is not None else ()
        if runtime.prompts is None and not stored:  # PERF: no prompts, nothing more per request
            return None
        return self._prompts.table(runtime.prompts, runtime, stored)

    def _prompt(self, ctx: Context, responder: Responder, prompts: PromptTable | None,
                endpoint: str | None) -> Awaitable[None]:
        """A prompt call, its catalogue or a chat request naming a ``prompt:`` model (gateway.prompts)."""
        from gateway.prompts import endpoint as prompt_endpoint

        if prompts is None:
            prompts = PromptTable({})
        if endpoint == "chat":
            ctx.endpoint = endpoint
            return prompt_endpoint.serve_chat(self, prompts, ctx, responder)
        return prompt_endpoint.serve(self, prompts, ctx, responder)

    def begin(self, request: Request, responder: CallbackResponder) -> Awaitable[None] | None:
        """``gateway.app.FastApp.begin``: what needs no waiting runs here; a non-stream request to a
        directly proxied model is answered from the upstream connection's callback (``_on_head``).

        # PERF: on that path a request costs no task, no future and no coroutine; everything that
        waits otherwise (a key the table does not know yet, a limit waiting for shared state, routed
        models, streams, a busy pool) goes on as the same coroutines ``handle`` uses.
        """
        ctx = self._context(request, responder)
        endpoint = _ENDPOINTS.get(request.path)
        prompts = self._prompt_table(ctx.runtime)
        if (prompts is not None or endpoint is None) and _prompt_request(prompts, request, endpoint):
            return self._guarded(ctx, responder, self._prompt(ctx, responder, prompts, endpoint))
        try:
            if endpoint is None and request.method == "POST":
                found = DIALECT_PATHS.get(request.path)
                if found is not None and found[0] == found[1].endpoint:
                    # another dialect's generation request (/v1/messages): the same path as chat's
                    ctx.dialect = found[1]
                    endpoint = found[0]
            if endpoint is None or request.method != "POST":
                if (self._access is not None and request.path.startswith("/v1/models")) or (
                        request.path in DIALECT_PATHS):  # another dialect's own endpoints: a coroutine
                    return self._guarded(ctx, responder, self._other(ctx, responder, endpoint))
                if request.path.startswith("/v1/responses"):
                    return self._guarded(ctx, responder, self._responses_local(ctx, responder))
                self._answer_other(ctx, responder, endpoint, None)
            elif endpoint is _RESPONSES:
                ctx.endpoint = endpoint
                return self._guarded(ctx, responder, self._responses_create(ctx, responder))
            else:
                ctx.endpoint = endpoint
                step = self._front(ctx, responder, 0, None)
                if type(step) is tuple:
                    waiting = step[0]
                    if isinstance(waiting, asyncio.Future):  # goes on from its callback (``_resumed``)
                        resume = step[1]
                        waiting.add_done_callback(partial(self._resumed, ctx, responder, resume))
                        return None
                    return self._guarded(ctx, responder, self._proxy(ctx, responder, step))
                if step is not None:
                    return self._to_model(ctx, responder, step)  # type: ignore[arg-type]
        except GatewayError as exc:
            # PERF: an answer needs no traceback; kept, it would tie the exception to the frames it came
            # through, a Python phase's frame holds ctx, and ctx.error the exception: a cycle per refusal
            # that only the cyclic collector frees (it cost the 429 a sixth of its time)
            exc.__traceback__ = None
            ctx.error = exc
            if not responder.started:
                self._send_error(ctx, responder, exc)
        except Exception:
            _answer_crash(ctx, responder)
        except BaseException:
            _crashed(ctx, responder)  # the front end answers 500
            self._settle(ctx)
            raise
        self._settle(ctx)
        responder.done()
        return None

    def _to_model(
        self, ctx: Context, responder: CallbackResponder, model: ModelEntry
    ) -> Awaitable[None] | None:
        """After the front steps: a non-stream request to a directly proxied model is sent on the callback
        path (answered by ``_on_head``: None), a routed one's first attempt too (``_route_now``); what
        needs a coroutine is returned (guarded)."""
        if ctx.stream:
            return self._guarded(ctx, responder, self._upstream(ctx, responder, model))
        if model.target is None:
            return self._route_now(ctx, responder, model)
        if not self._send_now(ctx, responder, model):
            return self._guarded(ctx, responder, self._upstream(ctx, responder, model))
        return None

    def _resumed(
        self, ctx: Context, responder: CallbackResponder, resume: int, waited: asyncio.Future[Any]
    ) -> None:
        """A front step waited for a future (the cache's Redis lookup, ``CachePhase``): the request goes
        on from its callback, as ``begin`` would have.

        # PERF: no task and no coroutine for the wait, and the request after it (a hit's answer, or a miss
        sent upstream) stays on the callback path. A request cut by the drain deadline meanwhile was
        answered and recorded by ``cut_unfinished`` (no task to cancel): its wait's outcome is dropped.
        """
        if ctx.settled:
            if not waited.cancelled():
                waited.exception()  # retrieved: nothing to report
            return
        try:
            if waited.cancelled():
                raise _CANCELLED
            step = self._front(ctx, responder, resume, waited.result())
            if type(step) is tuple:
                waiting = step[0]
                if isinstance(waiting, asyncio.Future):
                    resume = step[1]
                    waiting.add_done_callback(partial(self._resumed, ctx, responder, resume))
                else:
                    self._finish_later(ctx, responder, self._proxy(ctx, responder, step))
                return
            if step is not None:
                work = self._to_model(ctx, responder, step)  # type: ignore[arg-type]
                if work is not None:
                    self._finish_later(ctx, responder, work, True)
                return
        except GatewayError as exc:
            exc.__traceback__ = None  # no cycle through the frames (see begin)
            ctx.error = exc
            if not responder.started:
                self._send_error(ctx, responder, exc)
        except Exception:
            _answer_crash(ctx, responder)
        self._settle(ctx)
        responder.done()

    async def _guarded(self, ctx: Context, responder: Responder, work: Awaitable[None]) -> None:
        """Run the rest of a request: a GatewayError becomes its answer; the settle hooks and the call
        record always run, whatever ends the request:

            ended by                    | the client gets                  | recorded as
            ----------------------------+----------------------------------+----------------------------
            a GatewayError              | its answer (or its stream's end) | its status and code
            the client leaving          | nothing (gone)                   | the status sent, client_closed
            the worker's drain deadline | 503, or an error event + [DONE]  | worker_shutdown
            (``cut_unfinished``)        |                                  |
            another cancellation        | what the front end sends         | worker_shutdown when draining,
                                        |                                  | else request_cancelled
            an unexpected exception     | a 500 in its dialect (logged), or | 500, internal_error
                                        | a cut connection once answering  |
        """
        if ctx.settled:  # cut by the drain deadline before it began
            if isinstance(work, Coroutine):
                work.close()
            return
        ctx.task = asyncio.current_task()
        try:
            await work
        except GatewayError as exc:
            exc.__traceback__ = None  # no cycle through the frames (see begin)
            ctx.error = exc
            if not getattr(responder, "started", False):
                self._send_error(ctx, responder, exc)
        except ClientGone:
            ctx.error = _CLIENT_CLOSED
            raise
        except asyncio.CancelledError:
            cut = self._cut_error
            if cut is None:  # the front end's (granian's drain deadline): it answers what was not answered
                err = ctx.error = _WORKER_STOPPING if self.draining else _CANCELLED
                if not getattr(responder, "started", False):
                    ctx.status = err.status
                raise
            # the drain deadline (cut_unfinished): end the request while the client is still there
            task = ctx.task
            if task is not None:
                task.uncancel()
            await self._end_cut(ctx, ctx.responder, cut)  # a front (/v1/responses) re-encodes the error
        except Exception:
            _crashed(ctx, responder)
            if getattr(responder, "started", False):
                raise  # mid-answer: the front end cuts the connection (the client sees it end early)
            log.exception("unhandled error in request %s", ctx.request_id)
            _answer_internal(ctx, responder)
        finally:
            self._settle(ctx)

    async def _end_cut(self, ctx: Context, responder: Responder, err: GatewayError) -> None:
        """Tell the client of a request cut at the drain deadline, within a bound (it may be slow)."""
        ctx.error = err
        if not getattr(responder, "started", False):
            self._send_error(ctx, responder, err)
            return
        if getattr(responder, "finished", False):
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(0.5):
                await responder.write(_stream_end(ctx, err))
        responder.end_stream()

    async def _other(self, ctx: Context, responder: Responder, endpoint: str | None) -> None:
        key = None
        access = self._access
        path = ctx.request.path
        if endpoint is None:
            found = DIALECT_PATHS.get(path)
            if found is not None:  # a request in another dialect (gateway.dialects)
                await self._dialect_request(ctx, responder, *found)
                return
            if path.startswith("/v1/models") and ctx.request.header(b"anthropic-version") is not None:
                ctx.dialect = ANTHROPIC_MESSAGES  # the anthropic SDK: its shape of the list and errors
        if access is not None and endpoint is None and path.startswith("/v1/models"):
            key = await access.check(ctx, "models")
        self._answer_other(ctx, responder, endpoint, key)

    async def _dialect_request(
        self, ctx: Context, responder: Responder, endpoint: str, dialect: ClientDialect
    ) -> None:
        """A request in another dialect than OpenAI chat: its generation endpoint goes the proxy path
        with ``ctx.dialect`` set (the translators and the error answers read it); the others are the
        dialect's own (``gateway.dialects.endpoints``)."""
        ctx.dialect = dialect
        request = ctx.request
        if request.method != "POST":
            raise errors.MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use POST",
                                          headers=[("allow", "POST")])
        ctx.endpoint = endpoint
        if endpoint == dialect.endpoint:
            await self._proxy(ctx, responder)
            return
        from gateway.dialects.endpoints import dialect_endpoint

        await dialect_endpoint(self, ctx, responder, endpoint)

    def _answer_other(self, ctx: Context, responder: Responder, endpoint: str | None, key: Any) -> None:
        """Everything but a POST to a proxied endpoint: the gateway's own endpoints, 404, 405."""
        request = ctx.request
        if endpoint is not None:
            raise errors.MethodNotAllowed(
                f"{request.method} is not allowed on {request.path}; use POST",
                headers=[("allow", "POST")],
            )
        self._local(ctx, responder, key)

    def _local(self, ctx: Context, responder: Responder, key: Any = None) -> None:
        """Endpoints the gateway answers itself."""
        req = ctx.request
        path = req.path
        runtime = ctx.runtime
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if req.method != "GET":
                raise errors.MethodNotAllowed(f"{req.method} is not allowed on {path}; use GET",
                                              headers=[("allow", "GET")])
            if ctx.dialect is not None or req.header(b"anthropic-version") is not None:
                from gateway.dialects.endpoints import anthropic_models

                ctx.dialect = ANTHROPIC_MESSAGES
                body = anthropic_models(runtime, path, key)
            elif path == "/v1/models":
                body = runtime.models_body if key is None else _models_for(runtime, key)
            else:
                name = unquote(path[len("/v1/models/"):])  # ids may contain "/" sent as %2F
                found = runtime.model_bodies.get(name)
                if found is None or (key is not None and not _key_allows(key, name)):
                    raise errors.NotFound(f"The model `{name}` does not exist", param="model",
                                          code="model_not_found")
                body = found
            self._reply(ctx, responder, Reply(200, body))
        elif path == "/healthz":
            self._reply(ctx, responder, Reply(200, b'{"status":"ok"}'))
        elif path == "/readyz":
            if self.draining:
                self._reply(ctx, responder, Reply(503, b'{"status":"draining"}'))
            else:
                self._reply(ctx, responder, Reply(200, b'{"status":"ready"}'))
        elif self.metrics is not None and path == self.metrics.path:  # "" while [metrics] is disabled
            self._reply(ctx, responder, self.metrics.answer(req))
        else:
            raise errors.NotFound(f"Unknown request URL: {req.method} {path}", code="unknown_url")

    def _reply(self, ctx: Context, responder: Responder, reply: Reply) -> None:
        ctx.status = reply.status
        runtime: Runtime = ctx.runtime
        headers = reply.headers + [("x-request-id", ctx.request_id),
                                   (runtime.overhead_header, _overhead_ms(ctx))]
        headers.extend(ctx.response_headers)
        responder.send(reply.status, headers, reply.body)

    def _answer_error(self, ctx: Context, responder: Responder, exc: GatewayError) -> None:
        """Answer with ``exc`` as if it had been raised (it was not: it may be shared, and is not changed)."""
        ctx.error = exc
        if not getattr(responder, "started", False):
            self._send_error(ctx, responder, exc)

    def _send_error(self, ctx: Context, responder: Responder, exc: GatewayError) -> None:
        ctx.status = status = exc.status
        runtime: Runtime = ctx.runtime
        headers = [_JSON_TYPE, ("x-request-id", ctx.request_id),
                   (runtime.overhead_header, _overhead_ms(ctx))]
        extra = exc.headers
        if extra:
            headers.extend(extra)
        if ctx.response_headers:
            headers.extend(ctx.response_headers)
        if exc.close and hasattr(responder, "keep_alive"):
            responder.keep_alive = False
        dialect = ctx.dialect
        if dialect is not None:  # the error in the client's dialect
            responder.send(status, dialect.response_headers(headers, time.time()),
                           dialect.error_body(exc, ctx.request_id))
            return
        responder.send(status, headers, exc.body)

    # the Responses API (gateway.responses.service) ------------------------------------------------

    def _responses_service(self) -> ResponsesService:
        service = self._responses
        if service is None:
            from gateway.responses.service import ResponsesService

            service = self._responses = ResponsesService(self._config)
        return service

    async def _responses_create(self, ctx: Context, responder: Responder) -> None:
        """``POST /v1/responses``: authenticated for the ``responses`` scope, decoded, continued from its
        previous response, then run through the proxy path with its dialect (``ctx.dialect``); the front
        stores the answer before its last part reaches the client."""
        access = self._access
        if access is not None:
            pending = access.authenticate(ctx)
            if isinstance(pending, GatewayError):
                self._answer_error(ctx, responder, pending)
                return
            if pending is not None:
                await pending
        ctype = ctx.request.header(b"content-type")
        if ctype is not None:  # (the front decodes the client's body before ``_parse``)
            _check_content_type(ctype)
        front = await self._responses_service().front(ctx, responder)  # sets ctx.dialect
        ctx.responder = front
        step = self._front(ctx, front, 1, None)
        if step is not None:
            await self._proxy(ctx, front, step)
        await front.complete()

    async def _responses_local(self, ctx: Context, responder: Responder) -> None:
        """``GET``/``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``."""
        request = ctx.request
        if request.path == "/v1/responses":
            raise errors.MethodNotAllowed(f"{request.method} is not allowed on /v1/responses; use POST",
                                          headers=[("allow", "POST")])
        access = self._access
        if access is not None:
            await access.check(ctx, _RESPONSES)
        ctx.endpoint = _RESPONSES
        service = self._responses_service()
        status, body = await service.answer(ctx, request.method, request.path, request.query)
        self._reply(ctx, responder, Reply(status, body))

    # parse ----------------------------------------------------------------------------------------

    def _parse(self, ctx: Context) -> None:
        req = ctx.request  # PERF: typed (engine.pxd): its header() is a C-level call
        ctype = req.header(b"content-type")
        if ctype is not None and ctype != b"application/json":  # PERF: the usual value, checked first
            _check_content_type(ctype)
        body = ctx.body  # the client's bytes; for /v1/responses the chat request its front made of them
        if not body:
            raise errors.BadRequest("The request body is empty; expected a JSON object",
                                    code="invalid_json")
        # PERF: one compiled pass over the bytes (strings skipped with memchr), not a second decode;
        # called at C level (``KeyWatch.check``)
        watch: KeyWatch = key_watches[ctx.endpoint]
        problem = watch.check(body, MAX_JSON_DEPTH)
        if problem:
            raise _refused_shape(problem, ctx.endpoint)
        try:
            fields = decoders[ctx.endpoint].decode(body)
        except msgspec.ValidationError as exc:
            raise _validation_error(exc) from None
        except msgspec.DecodeError:
            raise errors.BadRequest(
                "We could not parse the JSON body of your request. The body must be a JSON object.",
                code="invalid_json",
            ) from None
        ctx.fields = fields
        if not isinstance(fields, EmbeddingRequest):
            ctx.stream = bool(fields.stream)
            so = fields.stream_options
            ctx.include_usage = bool(so is not None and so.include_usage)

    # route / upstream / respond --------------------------------------------------------------------

    async def _proxy(
        self, ctx: Context, responder: Responder, step: _Step | ModelEntry | None = None
    ) -> None:
        """The proxy path as a coroutine; ``step``: where ``begin`` left off (a wait), if it did."""
        if step is None:
            step = self._front(ctx, responder, 0, None)
        while type(step) is tuple:
            waiting, resume = step
            step = self._front(ctx, responder, resume, await waiting)
        if step is not None:
            await self._upstream(ctx, responder, step)  # type: ignore[arg-type]

    def _front(
        self, ctx: Context, responder: Responder, resume: int, result: Any
    ) -> _Step | ModelEntry | None:
        """Everything before the upstream: authenticate, parse, the phases, the model.

        Returns the model to send to; None when a phase answered; or ``(awaitable, resume)`` when
        something must be waited for: the caller awaits it and calls again with ``resume`` and what the
        awaitable gave (``resume`` 1: after authentication; 2 + i: after phase i's awaitable).
        """
        access = self._access
        if resume == 0:
            if access is not None:
                pending = access.authenticate(ctx)  # before parsing: an unknown caller learns nothing more
                if pending is not None:
                    if isinstance(pending, GatewayError):  # a refusal returned, not raised
                        self._answer_error(ctx, responder, pending)
                        return None
                    return (pending, 1)
            resume = 1
        runtime: Runtime = ctx.runtime
        chain = runtime.chain
        if resume == 1:
            self._parse(ctx)
            if access is not None and (not ctx.key.unrestricted or access.approval):
                access.on_request(ctx)
            start = 0
        else:
            if result is not None:
                self._reply(ctx, responder, result)
                return None
            start = resume - 1
        for i in range(start, len(chain)):
            phase = chain[i]
            out = phase.on_request(ctx)
            if out is not None:
                if isinstance(out, GatewayError):  # a refusal returned, not raised (see Phase)
                    self._answer_error(ctx, responder, out)
                    return None
                if phase.is_async and type(out) is not Reply:  # an async phase may still answer at once
                    return (out, i + 2)  # type: ignore[return-value]
                self._reply(ctx, responder, out)  # type: ignore[arg-type]
                return None
        fields = ctx.fields
        model = runtime.models.get(ctx.route_model or fields.model)
        if model is None:
            # PERF: answered, not raised: the 404 of a name is built once (an exception and its raise
            # through this frame cost ~2 us)
            self._answer_error(ctx, responder, runtime.unknown_model(fields.model))
            return None
        if ctx.endpoint not in model.endpoints:
            raise errors.BadRequest(
                f"The model `{model.name}` does not serve the {ctx.endpoint} endpoint",
                param="model", code="unsupported_endpoint",
            )
        ctx.model = model
        return model

    def _send_now(self, ctx: Context, responder: CallbackResponder, model: ModelEntry) -> bool:
        """Send a directly proxied request on an idle pooled connection, to be answered by ``_on_head``;
        False when that cannot be done (nothing was sent then)."""
        target = model.target
        assert target is not None
        ctx.target = target
        ctx.attempts = 1
        body = self._upstream_body(ctx, target, model.name if ctx.route_model is not None else None)
        ctx.t_up = _perf()
        translator = target.translator
        extra = translator.forwarded(ctx.request)
        if ctx.trace is not None:
            extra = ctx.trace.upstream(extra, target.name)
        sent = translator.send_cb(
            ctx.endpoint, body, ctx.request_id, partial(self._on_head, ctx, responder), extra, ctx.stream,
        )
        if not sent and ctx.trace is not None:
            ctx.trace.unsent()
        return sent

    def _on_head(
        self, ctx: Context, responder: CallbackResponder, resp: UpstreamResponse | None, exc: Exception | None
    ) -> None:
        """The upstream's answer to a request sent by ``_send_now`` (called by the pool's connection)."""
        if ctx.settled:  # cut at the drain deadline (cut_unfinished): the client has had its answer
            if resp is not None:
                resp.close()
            return
        try:
            try:
                ctx.up_ms = (_perf() - ctx.t_up) * 1000.0
                if resp is None:
                    raise _upstream_failure(exc)
                ctx.upstream_status = resp.status
                whole = resp.complete_body()
                if whole is None:  # the body is still coming: read it in a task
                    self._finish_later(ctx, responder, self._after_head(ctx, responder, resp))
                    return
                try:
                    if resp.status >= 400:
                        self._relay_error(ctx, responder, resp, whole)
                    else:
                        self._relay_body(ctx, responder, resp, whole)
                finally:
                    resp.close()
            except GatewayError as err:
                err.__traceback__ = None  # no cycle through the frames (see begin)
                ctx.error = err
                if not responder.started:
                    self._send_error(ctx, responder, err)
            self._settle(ctx)
        except Exception:
            _answer_crash(ctx, responder)
            self._settle(ctx)
        responder.done()

    async def _finish(self, ctx: Context, responder: CallbackResponder, work: Awaitable[None],
                      guarded: bool = False) -> None:
        """The rest of a request begun on the callback path, as a task; then ``done()``. ``guarded``:
        ``work`` is ``_guarded``'s already."""
        try:
            await (work if guarded else self._guarded(ctx, responder, work))
        except Exception:
            _answer_crash(ctx, responder)
        responder.done()

    def _finish_later(self, ctx: Context, responder: CallbackResponder, work: Awaitable[None],
                      guarded: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(self._finish(ctx, responder, work, guarded))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _route_now(
        self, ctx: Context, responder: CallbackResponder, model: ModelEntry
    ) -> Awaitable[None] | None:
        """A routed model's first attempt on the callback path (``_on_routed_head``), when it needs no
        timer: no request deadline, no time bound on the chosen deployment. Everything after a failed
        first attempt (retries, fallbacks, the 503 listing why) is the coroutine ``_routed``.

        # PERF: on a healthy deployment a routed request costs the pick and the record over a direct
        one: no Attempts, no task, no coroutine.
        """
        router = model.router
        assert router is not None
        if router.deadline < _INF:
            return self._guarded(ctx, responder, self._routed(ctx, responder, model))
        # only what this model's strategy reads (often nothing); a plan gets the whole _route_info
        info = router.info(ctx.fields, ctx.key, ctx.request.header, len(ctx.body))
        now = _monotonic()
        i = router.pick(info, now, random.random)
        if i < 0:  # none eligible now: the coroutine path plans fallbacks or answers 503
            return self._plan_from(ctx, responder, model, i)
        dep = router.deployments[i]
        if dep.first_byte_timeout is not None or dep.total_timeout is not None:
            return self._plan_from(ctx, responder, model, i)
        target = model.targets[dep.id]
        router.acquire(i)
        body = self._upstream_body(ctx, target, dep.model)
        ctx.t_up = _perf()
        cb = partial(self._on_routed_head, ctx, responder, model, i, now)
        translator = target.translator
        extra = translator.forwarded(ctx.request)
        if ctx.trace is not None:
            extra = ctx.trace.upstream(extra, target.name)
        if not translator.send_cb(ctx.endpoint, body, ctx.request_id, cb, extra, ctx.stream):
            if ctx.trace is not None:
                ctx.trace.unsent()
            router.release(i)  # no idle connection: the first attempt is sent by the coroutine path
            return self._plan_from(ctx, responder, model, i)
        return None

    def _plan_from(
        self, ctx: Context, responder: CallbackResponder, model: ModelEntry, i: int
    ) -> Awaitable[None]:
        """The coroutine path from ``_route_now``'s pick ``i`` (-1: none), not sent."""
        return self._guarded(ctx, responder, self._routed(ctx, responder, model, _First(i, _route_info(ctx))))

    def _on_routed_head(
        self, ctx: Context, responder: CallbackResponder, model: ModelEntry, i: int, t0: float,
        resp: UpstreamResponse | None, exc: Exception | None,
    ) -> None:
        """The answer to ``_route_now``'s first attempt: a complete success is relayed and recorded here;
        anything else goes on in ``_routed`` with this attempt's result."""
        router = model.router
        assert router is not None
        if ctx.settled:  # cut at the drain deadline (cut_unfinished): the client has had its answer
            router.release(i)
            if resp is not None:
                resp.close()
            return
        try:
            now = _monotonic()
            ctx.up_ms = (_perf() - ctx.t_up) * 1000.0
            dep = router.deployments[i]
            if resp is not None and resp.status < 400:
                whole = resp.complete_body()
                if whole is not None:
                    target = ctx.target = model.targets[dep.id]
                    ctx.attempts = 1
                    ctx.upstream_status = resp.status
                    phase_headers = ctx.response_headers
                    ctx.response_headers = [*phase_headers, ("x-gateway-deployment", target.name)]
                    try:
                        self._relay_body(ctx, responder, resp, whole)
                    except GatewayError:  # not JSON: nothing was sent; _routed judges it (body read)
                        ctx.response_headers = phase_headers
                        ctx.attempts = 0
                    else:
                        resp.close()
                        router.ok(dep, now - t0, now)
                        self._settle(ctx)
                        responder.done()
                        return
            router.release(i)  # the attempt is taken over, in-flight count included, by the plan
            first = _First(i, _route_info(ctx), t0, now - t0, resp, exc)
            self._finish_later(ctx, responder, self._routed(ctx, responder, model, first))
        except Exception:
            _answer_crash(ctx, responder)
            self._settle(ctx)
            responder.done()

    async def _upstream(self, ctx: Context, responder: Responder, model: ModelEntry) -> None:
        """Send to the model's deployment (or through its router) and relay the answer."""
        target = model.target
        if target is None:
            await self._routed(ctx, responder, model)
            return
        ctx.target = target
        ctx.attempts = 1
        # a downgraded request is sent with the served model's id, whatever the client named
        body = self._upstream_body(ctx, target, model.name if ctx.route_model is not None else None)
        ctx.t_up = _perf()
        try:
            translator = target.translator
            extra = translator.forwarded(ctx.request)
            if ctx.trace is not None:
                extra = ctx.trace.upstream(extra, target.name)
            resp = await translator.send(ctx.endpoint, body, ctx.request_id, extra, ctx.stream)
        except (UpstreamTimeout, UpstreamError) as exc:
            ctx.up_ms = (_perf() - ctx.t_up) * 1000.0
            raise _upstream_failure(exc) from None
        ctx.upstream_status = resp.status
        await self._after_head(ctx, responder, resp)

    async def _after_head(self, ctx: Context, responder: Responder, resp: UpstreamResponse) -> None:
        """Relay a direct upstream's answer once its head is in: an error, a stream or a body."""
        try:
            if resp.status >= 400:
                self._relay_error(ctx, responder, resp, await self._read(ctx, resp))
            elif ctx.stream and _is_event_stream(resp):
                await self._relay_stream(ctx, responder, resp)
            else:
                # PERF: most bodies arrive with their head; take them without a coroutine per level
                whole = resp.complete_body()
                if whole is None:
                    whole = await self._read(ctx, resp)
                else:
                    ctx.up_ms = (_perf() - ctx.t_up) * 1000.0
                self._relay_body(ctx, responder, resp, whole)
        finally:
            resp.close()

    async def _routed(
        self, ctx: Context, responder: Responder, model: ModelEntry, first: _First | None = None
    ) -> None:
        """Send through the model's router: attempts, retries and fallbacks as its policy says.

        A failed attempt (connect error, timeout, 429, 5xx, a context-length error, a stream that fails
        before its first byte) is reported to the router, which decides the next attempt; the client sees
        only the final answer. Once any byte of a response has been sent, there is no other attempt.

        ``first``: what ``_route_now`` did: the deployment it picked (-1: none was eligible), and when it
        sent there, the first attempt's start, time to the head, and response or error.
        """
        router = model.router
        assert router is not None
        runtime = ctx.runtime
        if first is None:
            info = _route_info(ctx)
            attempts = router.plan(info, _monotonic(), random.random)  # NoDeploymentAvailable: a 503
        elif first.deployment < 0:
            attempts = router.plan(first.info, _monotonic(), random.random)
        else:
            attempts = router.plan(first.info, first.t0 or _monotonic(), random.random, first.deployment)
        pre = first if first is not None and first.t0 else None
        failure: GatewayError | None = None
        failed_resp: tuple[UpstreamResponse, bytes] | None = None
        phase_headers = ctx.response_headers  # what the phases set (rate-limit headers, downgrades)
        for attempt in attempts:
            if attempt.delay > 0:
                await asyncio.sleep(attempt.delay)
            dep = attempt.deployment
            owner = runtime.models[dep.model]
            target = owner.targets[dep.id]
            ctx.target = target
            ctx.attempts += 1
            ctx.response_headers = [*phase_headers, ("x-gateway-deployment", target.name)]
            if dep.model != model.name:
                ctx.response_headers.append(("x-gateway-model", dep.model))
            if failed_resp is not None:
                failed_resp[0].close()
                failed_resp = None
            if pre is not None:  # the first attempt was sent by _route_now: its result is in
                failed = await self._attempt(ctx, responder, attempts, attempt, target, b"", pre)
                pre = None
            else:
                body = self._upstream_body(ctx, target, dep.model)
                failed = await self._attempt(ctx, responder, attempts, attempt, target, body)
            if failed is None:
                return  # the client has its answer
            if failed.error is not None:
                failure = failed.error
            failed_resp = failed.answer
        if failed_resp is not None:  # the last attempt's own error answer goes to the client
            resp, err_body = failed_resp
            try:
                self._relay_error(ctx, responder, resp, err_body)
            finally:
                resp.close()
            return
        if failure is not None:
            raise failure
        raise NoDeploymentAvailable(model.name, attempts.unavailable, _monotonic())

    async def _attempt(
        self, ctx: Context, responder: Responder, attempts: Attempts, attempt: Attempt, target: Target,
        body: bytes, pre: _First | None = None,
    ) -> _Failed | None:
        """Send one attempt, take its answer within the attempt's time bounds, and report how it ended.

        None: the client has its answer (or its stream). Otherwise what the client gets if nothing follows:
        an error, or the upstream's own error answer (read, not yet relayed).

        Time bounds, one timer per attempt (an ``asyncio.timeout`` moved on once the first byte is in):

            waiting for  | bounded by                                 | when the bound passes
            -------------+--------------------------------------------+------------------------------------
            head         | first_byte_timeout, within the total bound | timeout: the next attempt may go
            first event  | first_byte_timeout, within the total bound | timeout: the next attempt may go
            body         | total bound                                | timeout: the next attempt may go
            stream       | total bound                                | an error event ends the stream;
                         |                                            | bytes were sent: no other attempt

        The total bound is ``attempt.timeout``: the deployment's ``total_timeout`` cut at the request's
        ``deadline``. Opening a connection counts against these and, alone, against the deployment's
        ``connect_timeout`` (``OriginPool.send_within``). A stream's "first event" is its first body
        piece, read before anything is sent so that a stream failing before it moves on transparently.

        ``pre``: the attempt was sent already (``_route_now``, which sends only attempts without time
        bounds); its head or error is in ``pre``.
        """
        dep = attempt.deployment
        total = attempt.timeout
        first_byte = dep.first_byte_timeout
        head_limit = first_byte if first_byte is not None and first_byte < total else total
        # PERF: no timer at all for an attempt without bounds; otherwise one, cheaper than wait_for's task
        timer = asyncio.timeout(head_limit) if head_limit < _INF else None
        translator = target.translator
        if pre is None:
            t0 = _monotonic()
            ctx.t_up = _perf()
        else:
            t0 = pre.t0
        ttfb = 0.0
        resp: UpstreamResponse | None = None
        data = b""
        waiting = "head"  # what the attempt waits for: "head", "first event", "body" or "stream"
        error: Exception | None = None
        refused: GatewayError | None = None
        try:
            try:
                async with timer or _UNBOUNDED:
                    if pre is not None:
                        if pre.response is None:
                            raise pre.error if isinstance(pre.error, UpstreamError) else UpstreamError(
                                str(pre.error))
                        resp = pre.response
                    else:
                        extra = translator.forwarded(ctx.request)
                        if ctx.trace is not None:
                            extra = ctx.trace.upstream(extra, target.name)
                        if dep.connect_timeout is None:
                            resp = await translator.send(ctx.endpoint, body, ctx.request_id, extra,
                                                         ctx.stream)
                        else:
                            resp = await translator.send_within(ctx.endpoint, body, ctx.request_id,
                                                                dep.connect_timeout, extra, ctx.stream)
                    ttfb = _monotonic() - t0 if pre is None else pre.ttfb
                    ctx.upstream_status = resp.status
                    streams = ctx.stream and resp.status < 400 and _is_event_stream(resp)
                    if streams:
                        waiting = "first event"
                        try:
                            data = await resp.next_chunk()
                        except ValueError as exc:  # framing the parser refused
                            raise UpstreamError(str(exc)) from None
                    if timer is not None and head_limit < total:  # the first byte is in: the total bound
                        when = timer.when()  # the first-byte bound's end, on the loop's clock
                        timer.reschedule(when + (total - head_limit) if when is not None and total < _INF
                                         else None)
                    if not streams:
                        waiting = "body"
                        whole = resp.complete_body()
                        data = whole if whole is not None else await resp.read()
                    elif data:
                        waiting = "stream"
                        await self._relay_stream(ctx, responder, resp, data)
            except (TimeoutError, UpstreamError) as exc:
                error = exc
            except _StreamRefused as exc:  # an error event first: nothing was sent
                refused = exc.error
                waiting = "first event"
            now = _monotonic()
            if refused is not None:
                assert resp is not None
                resp.close()
                outcome = outcome_of_status(refused.status)
                attempts.report(outcome, now, ttfb=ttfb, total=now - t0)
                if outcome is Outcome.CLIENT_ERROR:
                    raise refused
                return _Failed(refused, None)
            if waiting != "stream":
                ctx.up_ms = (_perf() - ctx.t_up) * 1000.0
            if error is not None:
                if resp is not None:
                    resp.close()
                if waiting == "stream":  # the total bound passed mid-stream: end the client's stream
                    attempts.report(Outcome.TIMEOUT, now, ttfb=ttfb, total=now - t0, sent=True)
                    await _stream_failed(ctx, responder, errors.GatewayTimeout(
                        f"The upstream stream did not finish within {total:g}s ({_total_bound(dep, total)})"
                    ))
                    responder.end_stream()
                    return None
                outcome, failure = _attempt_failure(error, waiting, dep, head_limit, total)
                attempts.report(outcome, now, ttfb=ttfb, total=now - t0)
                return _Failed(failure, None)
            assert resp is not None
            status = resp.status
            if waiting == "stream":
                resp.close()
                outcome = Outcome.OK if ctx.error is None else Outcome.SERVER_ERROR
                attempts.report(outcome, now, ttfb=ttfb, total=now - t0, sent=True)
                return None
            if waiting == "first event":  # the stream ended before its first event: nothing was sent
                resp.close()
                attempts.report(Outcome.SERVER_ERROR, now, ttfb=ttfb, total=now - t0)
                return _Failed(errors.BadGateway("The upstream stream ended before any event",
                                                 code="upstream_stream_error"), None)
            if status >= 400:
                outcome = outcome_of_status(status, data)
                if outcome is Outcome.CREDENTIALS:  # the deployment's fault: never relayed as the client's
                    resp.close()
                    attempts.report(outcome, now, ttfb=ttfb, total=now - t0)
                    refused = credentials_rejected(target.provider, status, data, target.translator)
                    return _Failed(refused, None)
                if outcome is not Outcome.CLIENT_ERROR:  # 429, 5xx, 408, context length: may go on
                    retry_after = parse_retry_after(
                        resp.header(b"retry-after"), resp.header(b"retry-after-ms")
                    )
                    attempts.report(outcome, now, ttfb=ttfb, total=now - t0, retry_after=retry_after)
                    return _Failed(None, (resp, data))  # kept open: relayed if nothing else answers
                attempts.report(outcome, now, ttfb=ttfb, total=now - t0)
                try:
                    self._relay_error(ctx, responder, resp, data)
                finally:
                    resp.close()
                return None
            try:
                self._relay_body(ctx, responder, resp, data)
            except GatewayError as exc:  # not JSON: nothing was sent, so another attempt may still answer
                attempts.report(Outcome.SERVER_ERROR, now, ttfb=ttfb, total=now - t0)
                return _Failed(exc, None)
            finally:
                resp.close()
            attempts.report(Outcome.OK, now, ttfb=ttfb, total=now - t0, sent=True)
            return None
        except BaseException:
            # cancelled (drain), or the client left: no result to report; release what the attempt holds
            if resp is not None:
                resp.close()
            attempts.abandon()
            raise

    def _upstream_body(self, ctx: Context, target: Target, model_name: str | None = None) -> bytes:
        """The request for the target's upstream, built by its translator from the client's."""
        if model_name is not None:  # a routed attempt, perhaps of a fallback model
            rewrite = target.upstream_model != ctx.fields.model and not target.translator.model_in_path
        else:
            rewrite = target.rewrite_model
        return target.translator.request_body(ctx, target.upstream_model, rewrite)

    def _pass_headers(self, ctx: Context, resp: UpstreamResponse) -> Headers:
        # the gateway's own x-ratelimit-* headers replace the upstream's when a limit applies here (a
        # budget reservation alone, held without a plan of limits, sets none)
        ratelimit = ctx.limits is None or ctx.limits[0] is None
        target = ctx.target
        assert target is not None
        out = target.translator.pass_headers(resp, ratelimit, [("x-request-id", ctx.request_id)])
        if ctx.response_headers:
            out.extend(ctx.response_headers)
        if ctx.dialect is not None:  # the headers as the client's dialect names them
            return ctx.dialect.response_headers(out, time.time())  # type: ignore[no-any-return]
        return out

    async def _read(self, ctx: Context, resp: UpstreamResponse) -> bytes:
        try:
            return await resp.read()
        except UpstreamTimeout as exc:
            raise errors.GatewayTimeout(f"The upstream provider timed out: {exc}") from None
        except UpstreamError as exc:
            raise errors.BadGateway(f"The upstream provider failed: {exc}") from None
        finally:
            ctx.up_ms = (_perf() - ctx.t_up) * 1000.0

    def _relay_body(self, ctx: Context, responder: Responder, resp: UpstreamResponse, body: bytes) -> None:
        target: Target | None = ctx.target
        runtime: Runtime = ctx.runtime
        assert target is not None
        if ctx.stream:  # a stream request answered with one JSON body: the client gets its stream
            events = target.translator.body_as_stream(ctx, resp, body)
            if runtime.stream_chain:
                try:
                    events = _observed_whole(ctx, runtime, events)
                except GatewayError as exc:  # a phase refused the answer (an output guardrail)
                    self._answer_error(ctx, responder, exc)
                    return
            ctx.status = resp.status
            headers = self._pass_headers(ctx, resp)
            headers.extend(_SSE_HEADERS)
            headers.append((runtime.overhead_header, _overhead_ms(ctx)))
            responder.send(resp.status, headers, events)
            return
        body = target.translator.take_body(ctx, body)  # the usage is learned; raises when not JSON
        if runtime.response_chain:
            try:
                for phase in runtime.response_chain:
                    body = phase.on_response(ctx, body)
            except GatewayError as exc:  # a phase refused the answer (an output guardrail): nothing sent
                self._answer_error(ctx, responder, exc)
                return
        ctx.status = resp.status
        headers = self._pass_headers(ctx, resp)
        headers.append(("content-type", "application/json"))
        headers.append((runtime.overhead_header, _overhead_ms(ctx)))
        ctx.answer = body
        responder.send(resp.status, headers, body)

    def _relay_error(self, ctx: Context, responder: Responder, resp: UpstreamResponse, body: bytes) -> None:
        target = ctx.target
        assert target is not None
        if resp.status in CREDENTIAL_STATUSES:  # the provider refused the gateway's key, not the client's
            raise credentials_rejected(target.provider, resp.status, body, target.translator)
        answer = target.translator.client_error(ctx, resp.status, body)
        if answer is None:
            status = resp.status
            text = body[:200].decode("utf-8", "replace")
            message = (
                f"The upstream provider answered {status} with a body that is not an error of its API: {text}"
            )
            headers = self._pass_headers(ctx, resp)[1:]
            _sane_retry_hints(headers)
            if status == 429:  # keep the status: clients must still back off
                raise errors.RateLimited(message, code="upstream_rate_limited", headers=headers)
            raise errors.BadGateway(message, code="upstream_error", headers=headers)
        status, body = answer
        ctx.status = status
        ctx.error = errors.GatewayError(f"upstream answered {resp.status}", code="upstream_error")
        headers = self._pass_headers(ctx, resp)
        _sane_retry_hints(headers)  # (a retry hint comes with an error: a 2xx answer's are not looked at)
        headers.append(("content-type", "application/json"))
        headers.append((ctx.runtime.overhead_header, _overhead_ms(ctx)))
        responder.send(status, headers, body)

    async def _relay_stream(
        self, ctx: Context, responder: Responder, resp: UpstreamResponse, first: bytes | None = None
    ) -> None:
        """Relay an event stream through the translator's relay, event by event; ``first``: its first
        piece when the caller (a routed attempt) has read it already. When that piece is only an error
        (an Anthropic ``error`` event before any content), nothing is sent and ``_StreamRefused`` is
        raised: the attempt failed before the first byte, so routing may still go elsewhere."""
        target = ctx.target
        assert target is not None
        relay = target.translator.stream_relay(ctx)
        pending = b""
        if first is not None:
            pending = relay.feed(first)
            if relay.error is not None and not pending:
                raise _StreamRefused(relay.error)
        runtime: Runtime = ctx.runtime
        if runtime.stream_chain:
            await self._relay_observed(ctx, responder, resp, relay, pending, runtime)
            return
        ctx.status = resp.status
        headers = self._pass_headers(ctx, resp)
        headers.extend(_SSE_HEADERS)
        headers.append((ctx.runtime.overhead_header, _overhead_ms(ctx)))
        responder.start_stream(resp.status, headers)
        ctx.t_first = _perf()
        t_up = ctx.t_up
        try:
            if pending:
                await responder.write(pending)
            failed = relay.error
            ended = failed is not None
            if failed is not None:
                await _stream_failed(ctx, responder, failed)
            while not ended:
                try:
                    chunk = await resp.next_chunk()
                except (UpstreamError, ValueError) as exc:
                    await _stream_failed(ctx, responder, errors.BadGateway(
                        f"The upstream stream failed: {exc}", code="upstream_stream_error"))
                    break
                data = relay.feed(chunk) if chunk else relay.end()
                if data:
                    await responder.write(data)
                if relay.error is not None:
                    await _stream_failed(ctx, responder, relay.error)
                    break
                ended = not chunk
        finally:
            ctx.up_ms = (_perf() - t_up) * 1000.0
        responder.end_stream()

    async def _relay_observed(
        self, ctx: Context, responder: Responder, resp: UpstreamResponse, relay: Any, pending: bytes,
        runtime: Runtime,
    ) -> None:
        """``_relay_stream`` with the phases' stream observers (``Phase.on_stream``) between the relay and
        the client: each piece goes through them in reverse chain order. Kept apart so that the common
        path (no observer) pays nothing for them."""
        observers = [o for o in (p.on_stream(ctx) for p in runtime.stream_chain) if o is not None]
        ctx.status = resp.status
        headers = self._pass_headers(ctx, resp)
        headers.extend(_SSE_HEADERS)
        headers.append((runtime.overhead_header, _overhead_ms(ctx)))
        responder.start_stream(resp.status, headers)
        ctx.t_first = _perf()  # the time to first token, as on the unobserved path
        t_up = ctx.t_up

        async def send(data: bytes) -> None:
            for o in observers:
                data = o.feed(data)
            if data:
                await responder.write(data)

        try:
            try:
                if pending:
                    await send(pending)
                failed = relay.error
                ended = failed is not None
                if failed is not None:
                    await _stream_failed(ctx, responder, failed)
                while not ended:
                    try:
                        chunk = await resp.next_chunk()
                    except (UpstreamError, ValueError) as exc:
                        await _stream_failed(ctx, responder, errors.BadGateway(
                            f"The upstream stream failed: {exc}", code="upstream_stream_error"))
                        break
                    data = relay.feed(chunk) if chunk else relay.end()
                    if data:
                        await send(data)
                    if relay.error is not None:
                        await _stream_failed(ctx, responder, relay.error)
                        break
                    ended = not chunk
                tail = b""
                for o in observers:
                    tail = o.feed(tail) if tail else b""
                    tail += o.end()
                if tail:
                    await responder.write(tail)
            except GatewayError as exc:  # an observer refused the stream (an output guardrail): end it
                await _stream_failed(ctx, responder, exc)
        finally:
            ctx.up_ms = (_perf() - t_up) * 1000.0
        responder.end_stream()

    # settle ----------------------------------------------------------------------------------------

    def _settle(self, ctx: Context) -> None:
        """The end of a request, once whatever ended it: the phases' settle hooks and the call record."""
        if ctx.settled:
            return
        ctx.settled = True
        self._live.discard(ctx)
        runtime: Runtime = ctx.runtime
        for phase in runtime.settle_chain:
            try:
                phase.on_settle(ctx)
            except Exception:
                log.exception("settle hook of phase %s failed", phase.name)
        if ctx.trace is not None:
            try:
                tracer: Any = self.tracer
                tracer.end(ctx, ctx.status)
            except Exception:
                log.exception("tracing: the spans of a request could not be built")
        if not self.records.enabled:
            return
        if not ctx.overhead:
            _overhead_ms(ctx)
        # PERF: a flat tuple appended to the loop iteration's list; the iteration's rows are counted into
        # the request metrics and turned into records at once, at its end (gateway.observe.records)
        target: Target | None = ctx.target
        model: ModelEntry | None = ctx.model
        usage = ctx.usage
        err = ctx.error
        req = ctx.request
        self.records.emit((
            time.time(), ctx.request_id, req.method, req.path, ctx.status,
            (_perf() - ctx.t0) * 1000.0, ctx.overhead,
            ctx.fields.model if ctx.fields is not None else None,
            target.provider if target is not None else None,
            target.upstream_model if target is not None else None,
            ctx.stream, ctx.upstream_status, ctx.up_ms if ctx.t_up else None,
            usage, err, self.worker, ctx.key,
            target.name if target is not None and model is not None and model.target is None
            else None,
            ctx.attempts, ctx.cost, ctx.endpoint,
            (ctx.t_first - ctx.t0) * 1000.0 if ctx.t_first else None, req, ctx.answer, ctx.cache, ctx.prompt,
        ))


def _observed_whole(ctx: Context, runtime: Runtime, events: bytes) -> bytes:
    """A whole stream (a stream request answered with one body) through the phases' stream observers."""
    for phase in runtime.stream_chain:
        observer = phase.on_stream(ctx)
        if observer is not None:
            events = observer.feed(events) + observer.end()
    return events


async def _stream_failed(ctx: Context, responder: Responder, err: GatewayError) -> None:
    """A stream that cannot go on: the error, as an event in the client's dialect, and the stream's
    regular end (``data: [DONE]``), so that every client sees the error and a well-formed stream."""
    ctx.error = err
    await responder.write(_stream_end(ctx, err))


def _stream_end(ctx: Context, err: GatewayError) -> bytes:
    """The bytes that end a client's stream with ``err``, in its dialect."""
    dialect = ctx.dialect
    if dialect is None:
        return b"data: " + err.body + b"\n\n" + _DONE
    data: bytes = dialect.stream_error(err, ctx.request_id)
    return data


def _served_endpoints(endpoints: Sequence[str]) -> frozenset[str]:
    """A model's endpoints: those configured, and each dialect's generation endpoint whose capability
    it has (a chat model serves ``/v1/messages``)."""
    served = set(endpoints)
    served.update(d.endpoint for _, d in DIALECT_PATHS.values() if d.serves in served)
    return frozenset(served)


def _refused_shape(problem: int, endpoint: str) -> errors.BadRequest:
    """The 400 for a body ``check_json`` refused (``problem``: its answer)."""
    if problem == TOO_DEEP:
        return errors.BadRequest(
            f"The JSON body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep; the limit is "
            f"{MAX_JSON_DEPTH}.",
            code="invalid_json",
        )
    path = key_watches[endpoint].paths[problem - 1]
    return errors.BadRequest(
        f"The JSON body repeats the key '{path}'; the gateway reads it, so it must appear once.",
        param=path, code="duplicate_key",
    )


def _answer_crash(ctx: Context, responder: CallbackResponder) -> None:
    """An unexpected error on the callback path (inside an ``except`` block): logged with its traceback,
    and a 500 that closes the connection if nothing was sent yet."""
    log.exception("unhandled error in request %s", ctx.request_id)
    _crashed(ctx, responder)
    if not responder.started:
        _answer_internal(ctx, responder)


def _answer_internal(ctx: Context, responder: Responder) -> None:
    """The 500 of a request an unexpected exception ended before anything was sent: in the client's
    dialect, with its request id; the connection is not reused."""
    if hasattr(responder, "keep_alive"):
        responder.keep_alive = False
    headers = [_JSON_TYPE, ("x-request-id", ctx.request_id)]
    dialect = ctx.dialect
    if dialect is not None:
        responder.send(500, dialect.response_headers(headers, time.time()),
                       dialect.error_body(_INTERNAL_ANSWER, ctx.request_id))
    else:
        responder.send(500, headers, _INTERNAL)


def _crashed(ctx: Context, responder: Responder) -> None:
    """What the call record of a request ended by an unexpected exception says."""
    ctx.error = _INTERNAL_ERROR
    if not getattr(responder, "started", False):
        ctx.status = 500


#: what the call records of requests ended by something other than an answer say (never raised)
_INTERNAL_ERROR = errors.GatewayError("internal error (see the worker's log)")


#: the answer to a request an unexpected exception ended before anything was sent (``_answer_internal``)
_INTERNAL_ANSWER = errors.GatewayError("internal error")
_CLIENT_CLOSED = errors.ClientClosed("the client closed the connection before the response was complete")
_WORKER_STOPPING = errors.ServiceUnavailable("The gateway worker shut down before the request finished",
                                             code="worker_shutdown")
_CANCELLED = errors.ClientClosed("the request was cancelled by the front end", code="request_cancelled")


def _check_content_type(ctype: bytes) -> None:
    """A body whose Content-Type says it is not JSON is refused (415); none said is taken as JSON."""
    mt = ctype.split(b";", 1)[0].strip().lower()
    if mt not in _ACCEPTED_TYPES and not mt.endswith(b"+json"):
        raise errors.UnsupportedMediaType(
            f"Unsupported Content-Type {mt.decode('latin-1')!r}; send application/json"
        )


#: the longest wait a relayed retry hint may ask for (a day): an upstream's bigger figure is cut to it
_MAX_RETRY_AFTER = 86400


def _sane_retry_hints(headers: Headers) -> None:
    """The upstream's ``retry-after`` as the whole seconds the docs promise (an HTTP date converted, a
    negative, non-numeric or absurd value dropped or cut to a day), and ``retry-after-ms`` kept only when
    it is a number of milliseconds: a client's retry logic must not be handed what it cannot read."""
    for i in range(len(headers) - 1, -1, -1):
        name, value = headers[i]
        if name == "retry-after":
            seconds = parse_retry_after(value, None, time.time())
            if seconds is None or not math.isfinite(seconds):
                del headers[i]
            else:
                headers[i] = (name, str(min(_MAX_RETRY_AFTER, math.ceil(seconds))))
        elif name == "retry-after-ms":
            ms = parse_retry_after(None, value)
            if ms is None or not math.isfinite(ms):
                del headers[i]
            else:
                headers[i] = (name, str(min(_MAX_RETRY_AFTER * 1000, math.ceil(ms * 1000))))


def _upstream_failure(exc: Exception | None) -> GatewayError:
    """A transport failure before the head, as the client's answer: 504 for a timeout, else 502."""
    if isinstance(exc, UpstreamTimeout):
        return errors.GatewayTimeout(f"The upstream provider timed out: {exc}")
    return errors.BadGateway(f"The upstream provider failed: {exc}")


def _prompt_request(prompts: PromptTable | None, request: Request, endpoint: str | None) -> bool:
    """A request for gateway.prompts: under /v1/prompts (the catalogue answers with no prompts too), a
    prompt's own path, or a chat or Messages request that may name a ``prompt:`` model (# PERF: a
    proxied request is looked at only when there are prompts)."""
    if endpoint is None:
        path = request.path
        if path == "/v1/messages":  # a Messages request naming a ``prompt:`` model
            return prompts is not None and b'"prompt:' in request.body
        return path.startswith("/v1/prompts") or (prompts is not None and path in prompts.by_path)
    return prompts is not None and endpoint == "chat" and b'"prompt:' in request.body


def _key_allows(key: Any, model: str) -> bool:
    return bool(key.models.allows(model) and key.tenant.models.allows(model))


def _models_for(runtime: Runtime, key: Any) -> bytes:
    """/v1/models as one key sees it: only the models it may call."""
    if key.models.allows_all and key.tenant.models.allows_all:
        return runtime.models_body
    created = int(time.time())
    return encode({
        "object": "list",
        "data": [Runtime._model_obj(e, created) for n, e in runtime.models.items() if _key_allows(key, n)],
    })


def _limits_configured(config: Config) -> bool:
    lim = config.limits
    return bool(lim.policies or lim.budgets)


async def _open_breaker_sync(config: Config) -> BreakerSync:
    """Breaker state shared through the store's medium: a SQLite file beside the store's (the node's
    workers), or the store's Redis (every node)."""
    from gateway.routing.sync import BreakerSync, RedisSyncTransport, SqliteSyncTransport, SyncTransport

    url = config.store.url
    scheme, _, rest = url.partition("://")
    transport: SyncTransport
    if scheme == "sqlite":
        transport = SqliteSyncTransport(rest + "-breakers")
    else:
        transport = await RedisSyncTransport.open(url, prefix=config.store.prefix)
    return BreakerSync(transport)


async def _close_when_idle(translator: OpenAITranslator, poll: float = 1.0) -> None:
    """Close a retired provider's transport after its last in-flight request has finished."""
    transport = translator.transport
    while isinstance(transport, OriginPool) and transport.stats()["busy"]:
        await asyncio.sleep(poll)
    await translator.close()


class _First(NamedTuple):
    """What ``Engine._route_now`` did with a routed request's first attempt (see ``Engine._routed``)."""

    #: the deployment picked (its index), or -1 when none was eligible
    deployment: int
    info: RequestInfo
    #: when it was sent (monotonic; 0: not sent), the time to its head, its head or its error
    t0: float = 0.0
    ttfb: float = 0.0
    response: UpstreamResponse | None = None
    error: Exception | None = None


def _route_info(ctx: Context) -> RequestInfo:
    """What the router needs of a request: the hash keys, the token estimate (context fit, tpm) and the
    key's data residency (every attempt stays within the deployments it allows)."""
    fields = ctx.fields
    key = ctx.key
    max_tokens = getattr(fields, "max_tokens", None)
    tokens = len(ctx.body) // 4 + (max_tokens if isinstance(max_tokens, int) else 0)
    # PERF: positional (keywords cost ~0.4 us here)
    if key is None:
        return RequestInfo(getattr(fields, "user", None), None, ctx.request.header, tokens)
    return RequestInfo(getattr(fields, "user", None), key.id, ctx.request.header, tokens, key.residency)


class _StreamRefused(Exception):
    """A stream whose first piece is only an error (``_relay_stream``): nothing was sent to the client."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


class _Failed(NamedTuple):
    """A routed attempt that did not answer the client: what the client gets if nothing follows."""

    #: the error to answer with (None: keep the previous one; ``answer`` is set)
    error: GatewayError | None
    #: the upstream's own error answer and its body, still open
    answer: tuple[UpstreamResponse, bytes] | None


#: the time bound of an attempt that has none (no timeouts, no deadline)
_UNBOUNDED = contextlib.nullcontext()


def _total_bound(dep: Deployment, total: float) -> str:
    """Which setting made an attempt's total bound, for messages."""
    return "the deployment's total_timeout" if total == dep.total_timeout else "the request's deadline"


def _attempt_failure(
    exc: Exception, waiting: str, dep: Deployment, head_limit: float, total: float
) -> tuple[Outcome, GatewayError]:
    """How a routed attempt that raised ``exc`` while ``waiting`` for a part of the answer ended."""
    if isinstance(exc, TimeoutError):  # the attempt's own bound
        if waiting == "body":
            what, limit = "the answer did not finish", total
            why = _total_bound(dep, total)
        else:
            what = "no response head" if waiting == "head" else "no first stream event"
            limit = head_limit
            why = "first_byte_timeout" if head_limit == dep.first_byte_timeout else _total_bound(dep, total)
        return Outcome.TIMEOUT, errors.GatewayTimeout(
            f"The upstream provider timed out: {what} within {limit:g}s ({why})"
        )
    if isinstance(exc, UpstreamTimeout):  # connect, pool wait, or the provider's read_timeout
        return Outcome.TIMEOUT, errors.GatewayTimeout(f"The upstream provider timed out: {exc}")
    if waiting == "head":
        return outcome_of_exception(exc), errors.BadGateway(f"The upstream provider failed: {exc}")
    if waiting == "first event":
        return Outcome.SERVER_ERROR, errors.BadGateway(f"The upstream stream failed: {exc}",
                                                       code="upstream_stream_error")
    return Outcome.SERVER_ERROR, errors.BadGateway(f"The upstream provider failed: {exc}")


def _is_event_stream(resp: UpstreamResponse) -> bool:
    ctype = resp.header(b"content-type")  # SSE, or AWS's binary event stream (Bedrock's ConverseStream)
    return ctype is not None and ctype.startswith(_STREAM_TYPES)


_STREAM_TYPES = (b"text/event-stream", b"application/vnd.amazon.eventstream")


def _validation_error(exc: msgspec.ValidationError) -> errors.BadRequest:
    """msgspec's message, e.g. "Expected `str`, got `int` - at `$.model`", in OpenAI's terms."""
    msg = str(exc)
    param = None
    if " - at `$." in msg:
        text, _, where = msg.rpartition(" - at `$.")
        param = where.rstrip("`")
    else:
        text = msg
    if text.startswith("Object missing required field `"):
        field = text[len("Object missing required field `"):].rstrip("`")
        param = f"{param}.{field}" if param else field
        return errors.BadRequest(f"Missing required parameter: '{param}'.", param=param,
                                 code="missing_required_parameter")
    if text.startswith("Expected `object`") and param is None:
        return errors.BadRequest("The request body must be a JSON object.", code="invalid_json")
    where = f" for '{param}'" if param else ""
    return errors.BadRequest(f"Invalid type{where}: {text}.", param=param, code="invalid_type")

