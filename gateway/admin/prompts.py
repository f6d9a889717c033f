"""The admin API's prompt operations: publish a prompt without a redeploy, switch its live version (the
instant rollback), withdraw it, list what is served (docs/prompts.md).

A published prompt is a record of the store (``StoredPrompt``): every worker reads it with the keys, so a
write is answered once every worker of the node serves it (``x-gateway-applied``, as for keys). Prompts of
the config file are listed too (``source: "config"``) and cannot be changed here (409): the file is theirs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from gateway.admin import errors as E
from gateway.admin.errors import AdminError
from gateway.admin.wire import Deleted, Reason
from gateway.prompts.config import NAME, PromptConfig, prompt_problems
from gateway.store.base import NotFound
from gateway.store.models import StoredPrompt

if TYPE_CHECKING:
    from gateway.admin.app import Call, Result
    from gateway.config import Config
    from gateway.store.base import Store

__all__ = ["PromptAdmin", "PromptList", "PromptLive", "PromptPublish", "PromptView"]

VersionName = Annotated[str, msgspec.Meta(pattern=NAME.pattern)]


class PromptPublish(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: the prompt, as its ``[prompts.NAME]`` table would be written in TOML
    spec: PromptConfig
    reason: Reason | None = None


class PromptLive(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: the version every call gets from now on (any split is dropped): the rollback
    version: VersionName
    reason: Reason | None = None


class PromptView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    source: Literal["config", "store"]
    #: published prompts: the revision (1, 2, ...), when and by whom
    revision: int | None
    updated_at: float | None
    updated_by: str | None
    spec: PromptConfig


class PromptList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[PromptView]


def _view(p: StoredPrompt) -> PromptView:
    return PromptView(name=p.name, source="store", revision=p.revision, updated_at=p.updated_at,
                      updated_by=p.updated_by, spec=msgspec.convert(p.spec, PromptConfig))


def _decode(body: bytes, tp: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body or b"{}", type=tp)
    except msgspec.ValidationError as exc:
        raise AdminError(400, "invalid_argument", str(exc)) from None
    except msgspec.DecodeError:
        raise AdminError(400, E.INVALID_JSON, "the request body is not valid JSON") from None


class PromptAdmin:
    """The ``h_prompts_*`` handlers, mixed into ``AdminApp``."""

    config: Config

    def _require_store(self) -> Store:
        raise NotImplementedError  # AdminApp's

    async def _published(self, name: str) -> StoredPrompt | None:
        for p in await self._require_store().list_prompts():
            if p.name == name:
                return p
        return None

    def _writable(self, name: str) -> None:
        if not NAME.match(name):
            raise AdminError(400, "invalid_argument", "a prompt name is letters, digits, '.', '_' or '-' "
                             "(at most 64, not first '.-_')", param="name")
        if not self.config.auth.required:
            raise AdminError(409, "auth_not_required", "published prompts are read by the workers with the "
                             "keys: they need [auth] required = true", param="name")
        if name in self.config.prompts:
            raise AdminError(409, "config_prompt", f"prompt {name} is declared in the config file: change it "
                             "there", param="name")

    def _check(self, name: str, spec: PromptConfig) -> None:
        others = {p.path: n for n, p in self.config.prompts.items() if p.path is not None}
        if spec.path is not None and spec.path in others:
            raise AdminError(409, "path_taken", f"the path {spec.path} serves prompt {others[spec.path]}",
                             param="spec.path")
        for path, message in prompt_problems({name: spec}, self.config.models):
            where = ".".join(str(p) for p in ("spec", *path[2:]))
            raise AdminError(400, "invalid_prompt", f"{where}: {message}", param=where)

    async def h_prompts_list(self, call: Call) -> Result:
        views = [PromptView(name=n, source="config", revision=None, updated_at=None, updated_by=None, spec=p)
                 for n, p in self.config.prompts.items()]
        stored = await self._require_store().list_prompts()
        views += [_view(p) for p in stored if p.name not in self.config.prompts]
        return 200, PromptList(data=views)

    async def h_prompts_get(self, call: Call) -> Result:
        name = call.params["name"]
        if name in self.config.prompts:
            return 200, PromptView(name=name, source="config", revision=None, updated_at=None,
                                   updated_by=None, spec=self.config.prompts[name])
        found = await self._published(name)
        if found is None:
            raise AdminError(404, "not_found", f"no prompt {name}")
        return 200, _view(found)

    async def h_prompts_publish(self, call: Call) -> Result:
        name = call.params["name"]
        self._writable(name)
        body: PromptPublish = _decode(call.body, PromptPublish)
        self._check(name, body.spec)
        stored = await self._require_store().put_prompt(
            name, msgspec.to_builtins(body.spec), actor=call.principal.actor, reason=body.reason)
        return 200, _view(stored)

    async def h_prompts_live(self, call: Call) -> Result:
        name = call.params["name"]
        self._writable(name)
        body: PromptLive = _decode(call.body, PromptLive)
        found = await self._published(name)
        if found is None:
            raise AdminError(404, "not_found", f"no prompt {name}")
        spec = msgspec.convert(found.spec, PromptConfig)
        if body.version not in spec.versions:
            raise AdminError(400, "unknown_version", f"prompt {name} has no version {body.version} "
                             f"(versions: {', '.join(sorted(spec.versions))})", param="version")
        spec = msgspec.structs.replace(spec, live=body.version, split={})
        stored = await self._require_store().put_prompt(
            name, msgspec.to_builtins(spec), actor=call.principal.actor, reason=body.reason)
        return 200, _view(stored)

    async def h_prompts_delete(self, call: Call) -> Result:
        name = call.params["name"]
        self._writable(name)
        try:
            await self._require_store().delete_prompt(name, actor=call.principal.actor,
                                                      reason=call.query.get("reason"))
        except NotFound:
            raise AdminError(404, "not_found", f"no prompt {name}") from None
        return 200, Deleted(id=name, deleted=True)

    async def prompt_approval(self, model: str) -> str | None:
        """``approval`` of a published prompt named as a subscription's model ``prompt:NAME``, else None."""
        if not model.startswith("prompt:"):
            return None
        found = await self._published(model[len("prompt:"):])
        return None if found is None else str(found.spec.get("approval", "none"))
