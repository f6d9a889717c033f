"""``gateway keys | tenants | subscriptions | audit | usage``: the admin API from the command line.

Every command but ``keys digest`` is a client of the admin API over HTTP (httpx): ``--admin-url`` (default
``$GATEWAY_ADMIN_URL`` or ``http://127.0.0.1:8081``), the bearer token from the environment variable
``GATEWAY_ADMIN_TOKEN`` (or the one ``--token-env NAME`` names; never from the command line, where other
users could read it). Output is an aligned table, or with ``--json`` the API's own JSON. A failure prints
one line, ``gateway: <status> <code>: <message>``, and exits 1; a usage error exits 2.

``gateway keys digest`` is local: it reads a key or an admin token from standard input and prints the
digest to write into the TOML file (``[[auth.keys]] digest``, ``[admin] operator_token``, ...).
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["add_commands"]

DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"
DEFAULT_TOKEN_ENV = "GATEWAY_ADMIN_TOKEN"
#: page size when a command follows cursors through a whole listing
_PAGE = 200


class CliError(Exception):
    """A failure to report on one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- talking to the admin API ------------------------------------------------------------------------------


class AdminClient:
    def __init__(self, args: argparse.Namespace) -> None:
        import httpx

        env = args.token_env
        token = os.environ.get(env, "").strip()
        if not token:
            raise CliError(f"set {env} to an admin token (or name another variable with --token-env)", 2)
        self.url = args.admin_url.rstrip("/")
        self._httpx = httpx
        self._client = httpx.Client(
            base_url=self.url, timeout=15.0, headers={"authorization": f"Bearer {token}"}
        )

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, path: str, *, body: dict[str, Any] | None = None,
             params: dict[str, Any] | None = None) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._client.request(method, path, json=body, params=query)
        except self._httpx.TransportError as exc:
            reason = str(exc) or exc.__class__.__name__
            raise CliError(f"cannot reach the admin API at {self.url}: {reason}") from None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code >= 400:
            err = data.get("error") if isinstance(data, dict) else None
            if isinstance(err, dict):
                raise CliError(f"{resp.status_code} {err.get('code')}: {err.get('message')}")
            raise CliError(f"{resp.status_code} from the admin API at {self.url}")
        _warn_if_not_in_force(resp.headers.get("x-gateway-applied"))
        return data

    def text(self, method: str, path: str, *, params: dict[str, Any] | None = None) -> str:
        """A non-JSON answer's text (errors are JSON, reported as by ``call``)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._client.request(method, path, params=query)
        except self._httpx.TransportError as exc:
            reason = str(exc) or exc.__class__.__name__
            raise CliError(f"cannot reach the admin API at {self.url}: {reason}") from None
        if resp.status_code >= 400:
            try:
                err = resp.json().get("error")
            except (ValueError, AttributeError):
                err = None
            if isinstance(err, dict):
                raise CliError(f"{resp.status_code} {err.get('code')}: {err.get('message')}")
            raise CliError(f"{resp.status_code} from the admin API at {self.url}")
        return str(resp.text)

    def each(self, path: str, params: dict[str, Any], limit: int | None) -> list[Any]:
        """Follow the cursors of a listing; at most ``limit`` items (None: all)."""
        items: list[Any] = []
        cursor = None
        while True:
            size = _PAGE if limit is None else max(1, min(_PAGE, limit - len(items)))
            page = self.call("GET", path, params={**params, "cursor": cursor, "limit": size})
            items.extend(page["data"])
            cursor = page.get("next_cursor")
            if cursor is None or (limit is not None and len(items) >= limit):
                return items if limit is None else items[:limit]


def _warn_if_not_in_force(applied: str | None) -> None:
    """A write the admin API stored but could not see in force on every worker of its node in time."""
    if applied is None or applied == "node":
        return
    late = applied.partition("late=")[2]
    if late:
        told = f"{late} worker(s) of the node had not applied it when the admin API answered"
    else:
        told = "the admin API could not tell whether every worker of the node applies it yet"
    print(f"gateway: warning: the change is stored, but {told}; workers apply it with their next notice "
          "from the store", file=sys.stderr)


def _seg(value: str) -> str:
    """One path segment: a model name with '/' travels as %2F."""
    return urllib.parse.quote(value, safe="")


# -- output ------------------------------------------------------------------------------------------------


def _when(ts: Any) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(float(ts), datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _text(value: Any) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


Column = tuple[str, Callable[[dict[str, Any]], str]]


def _field(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: _text(row.get(name))


def _time(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: _when(row.get(name))


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    cells = [[title for title, _ in columns]] + [[get(row) for _, get in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _record(row: dict[str, Any]) -> str:
    width = max(len(k) for k in row)
    out = []
    for key, value in row.items():
        shown = _when(value) if key.endswith("_at") or key.endswith("_until") else _text(value)
        out.append(f"{key.ljust(width)}  {shown}")
    return "\n".join(out)


KEY_COLUMNS: list[Column] = [
    ("ID", _field("id")), ("NAME", _field("name")), ("TENANT", _field("tenant")),
    ("STATUS", _field("status")), ("SOURCE", _field("source")), ("MODELS", _field("allowed_models")),
    ("EXPIRES", _time("expires_at")), ("LAST USED", _time("last_used_at")), ("CREATED", _time("created_at")),
]
TENANT_COLUMNS: list[Column] = [
    ("ID", _field("id")), ("NAME", _field("name")), ("SOURCE", _field("source")),
    ("MODELS", _field("allowed_models")), ("LIMIT POLICY", _field("limit_policy")),
    ("BUDGET", _field("budget")), ("CREATED", _time("created_at")),
]
SUBSCRIPTION_COLUMNS: list[Column] = [
    ("TENANT", _field("tenant")), ("MODEL", _field("model")), ("STATE", _field("state")),
    ("REQUESTED BY", _field("requested_by")), ("REQUESTED", _time("requested_at")),
    ("DECIDED BY", _field("decided_by")), ("DECIDED", _time("decided_at")), ("REASON", _field("reason")),
]
AUDIT_COLUMNS: list[Column] = [
    ("SEQ", _field("seq")), ("WHEN", _time("at")), ("ACTOR", _field("actor")), ("ACTION", _field("action")),
    ("TARGET", _field("target")), ("REASON", _field("reason")),
]


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def _emit_list(args: argparse.Namespace, items: list[Any], columns: Sequence[Column], empty: str) -> None:
    if args.json:
        print(json.dumps(items, indent=2))
    elif not items:
        print(empty)
    else:
        print(_table(items, columns))


# -- argument helpers ----------------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(text: str) -> float:
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 30m, 12h, 30d or 2w")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _timestamp(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither Unix seconds nor an ISO 8601 time such as 2026-12-31 or 2026-12-31T18:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _expiry(args: argparse.Namespace) -> float | None:
    if getattr(args, "expires_in", None) is not None:
        return float(datetime.datetime.now(datetime.UTC).timestamp() + args.expires_in)
    value: float | None = getattr(args, "expires_at", None)
    return value


def _set(body: dict[str, Any], name: str, value: Any) -> None:
    if value is not None:
        body[name] = value


# -- commands ------------------------------------------------------------------------------------------------


Handler = Callable[[AdminClient, argparse.Namespace], None]


def _with_client(run: Handler) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        try:
            client = AdminClient(args)
            try:
                run(client, args)
            finally:
                client.close()
        except CliError as exc:
            print(f"gateway: {exc}", file=sys.stderr)
            return exc.code
        except BrokenPipeError:  # `gateway keys list | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        return 0

    return command


def _show_created(args: argparse.Namespace, data: dict[str, Any], verb: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.quiet:
        print(data["api_key"])
    else:
        key = data["key"]
        print(f"Key {key['id']} {verb} for tenant {key['tenant']}.")
        print("Store this key now; it is not shown again:\n")
        print(f"    {data['api_key']}\n")
        print(_record(key))


def keys_create(c: AdminClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name or ""}
    _set(body, "tenant", args.tenant)
    _set(body, "allowed_models", args.model)
    _set(body, "allowed_endpoints", args.endpoint)
    _set(body, "expires_at", _expiry(args))
    _set(body, "limit_policy", args.limit_policy)
    _set(body, "budget", args.budget)
    _set(body, "labels", dict(args.label) if args.label else None)
    _residency_body(body, args)
    _set(body, "reason", args.reason)
    _show_created(args, c.call("POST", "/admin/v1/keys", body=body), "created")


def keys_list(c: AdminClient, args: argparse.Namespace) -> None:
    items = c.each("/admin/v1/keys", {"tenant": args.tenant, "state": args.state}, args.limit)
    _emit_list(args, items, KEY_COLUMNS, "no keys")


def keys_show(c: AdminClient, args: argparse.Namespace) -> None:
    data = c.call("GET", f"/admin/v1/keys/{_seg(args.key_id)}")
    _emit(args, data, _record(data))


def keys_update(c: AdminClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {}
    _set(body, "name", args.name)
    _set(body, "allowed_models", args.model)
    _set(body, "allowed_endpoints", args.endpoint)
    if args.no_expiry:
        body["expires_at"] = None
    else:
        _set(body, "expires_at", _expiry(args))
    for name in ("limit_policy", "budget"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value or None
    _set(body, "labels", dict(args.label) if args.label else None)
    _residency_body(body, args)
    _set(body, "reason", args.reason)
    data = c.call("PATCH", f"/admin/v1/keys/{_seg(args.key_id)}", body=body)
    _emit(args, data, _record(data))


def keys_revoke(c: AdminClient, args: argparse.Namespace) -> None:
    data = c.call("POST", f"/admin/v1/keys/{_seg(args.key_id)}/revoke", body={"reason": args.reason})
    _emit(args, data, f"key {data['id']} revoked")


def keys_rotate(c: AdminClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"reason": args.reason}
    _set(body, "grace_seconds", args.grace)
    data = c.call("POST", f"/admin/v1/keys/{_seg(args.key_id)}/rotate", body=body)
    _show_created(args, data, "rotated")
    until = data["key"].get("previous_valid_until")
    if not args.json and not args.quiet:
        print(f"\nthe previous secret works until {_when(until)}" if until
              else "\nthe previous secret no longer works")


def keys_digest(args: argparse.Namespace) -> int:
    """Local: the digest of a key or token read from standard input."""
    from gateway.auth import keyformat

    pepper = b""
    if args.pepper_env:
        value = os.environ.get(args.pepper_env, "").strip()
        if not value:
            print(f"gateway: environment variable {args.pepper_env} is not set or empty", file=sys.stderr)
            return 2
        pepper = value.encode()
    if sys.stdin.isatty():
        raw = getpass.getpass("key or token (not echoed): ")
    else:
        raw = sys.stdin.readline()
    raw = raw.strip()
    if not raw:
        print("gateway: nothing on standard input: pipe in a key (gw-...) or an admin token", file=sys.stderr)
        return 2
    try:
        key_id, secret = keyformat.parse(raw)
    except keyformat.MalformedKey:
        # not a gw- key: an admin token, digested whole
        print(keyformat.digest(raw, pepper))
        return 0
    print(keyformat.digest(secret, pepper))
    print(f'key id: {key_id} (an [[auth.keys]] entry takes id = "{key_id}" and this digest)', file=sys.stderr)
    return 0


def tenants_create(c: AdminClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"id": args.tenant_id}
    _set(body, "name", args.name)
    _set(body, "allowed_models", args.model)
    _set(body, "limit_policy", args.limit_policy)
    _set(body, "budget", args.budget)
    _set(body, "labels", dict(args.label) if args.label else None)
    _residency_body(body, args)
    _set(body, "reason", args.reason)
    data = c.call("POST", "/admin/v1/tenants", body=body)
    _emit(args, data, f"tenant {data['id']} created")


def tenants_list(c: AdminClient, args: argparse.Namespace) -> None:
    _emit_list(args, c.each("/admin/v1/tenants", {}, args.limit), TENANT_COLUMNS, "no tenants")


def tenants_show(c: AdminClient, args: argparse.Namespace) -> None:
    data = c.call("GET", f"/admin/v1/tenants/{_seg(args.tenant_id)}")
    _emit(args, data, _record(data))


def tenants_update(c: AdminClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {}
    _set(body, "name", args.name)
    _set(body, "allowed_models", args.model)
    for name in ("limit_policy", "budget"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value or None
    _set(body, "labels", dict(args.label) if args.label else None)
    _residency_body(body, args)
    _set(body, "reason", args.reason)
    data = c.call("PATCH", f"/admin/v1/tenants/{_seg(args.tenant_id)}", body=body)
    _emit(args, data, _record(data))


def tenants_delete(c: AdminClient, args: argparse.Namespace) -> None:
    data = c.call("DELETE", f"/admin/v1/tenants/{_seg(args.tenant_id)}", params={"reason": args.reason})
    _emit(args, data, f"tenant {data['id']} deleted")


def subscriptions_request(c: AdminClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"model": args.model, "reason": args.reason}
    _set(body, "tenant", args.tenant)
    data = c.call("POST", "/admin/v1/subscriptions", body=body)
    _emit(args, data, f"subscription {data['tenant']}/{data['model']}: {data['state']}")


def subscriptions_list(c: AdminClient, args: argparse.Namespace) -> None:
    params = {"tenant": args.tenant, "model": args.model, "state": args.state}
    _emit_list(args, c.each("/admin/v1/subscriptions", params, args.limit), SUBSCRIPTION_COLUMNS,
               "no subscriptions")


def _decide(decision: str) -> Handler:
    def run(c: AdminClient, args: argparse.Namespace) -> None:
        path = f"/admin/v1/subscriptions/{_seg(args.tenant)}/{_seg(args.model)}/{decision}"
        data = c.call("POST", path, body={"reason": args.reason})
        _emit(args, data, f"subscription {data['tenant']}/{data['model']}: {data['state']}")

    return run


def audit_list(c: AdminClient, args: argparse.Namespace) -> None:
    params = {"tenant": args.tenant, "target": args.target, "action": args.action,
              "order": "asc" if args.oldest_first else "desc"}
    _emit_list(args, c.each("/admin/v1/audit", params, args.limit), AUDIT_COLUMNS, "no audit entries")


# -- the parsers ---------------------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--admin-url", default=os.environ.get("GATEWAY_ADMIN_URL", DEFAULT_ADMIN_URL),
                   help="the admin API (default: $GATEWAY_ADMIN_URL or %(default)s)")
    p.add_argument("--token-env", default=DEFAULT_TOKEN_ENV, metavar="NAME",
                   help="environment variable holding the admin token (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    return p


def _key_fields(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="display name")
    p.add_argument("--model", action="append", metavar="MODEL",
                   help="allowed model or glob pattern; repeat for several (default: *)")
    p.add_argument("--endpoint", action="append", metavar="ENDPOINT",
                   choices=["*", "chat", "completions", "embeddings", "messages", "models", "responses"],
                   help="allowed endpoint; repeat for several (default: *)")
    p.add_argument("--expires-at", type=_timestamp, metavar="TIME", help="Unix seconds or ISO 8601 (UTC)")
    p.add_argument("--expires-in", type=_duration, metavar="DURATION", help="e.g. 30d, 12h")
    p.add_argument("--limit-policy", metavar="NAME", help="a limit policy of the config")
    p.add_argument("--budget", metavar="NAME", help="a budget of the config")
    p.add_argument("--label", action="append", type=_label, metavar="KEY=VALUE",
                   help="label copied into call records; repeat for several")
    _residency_args(p)
    p.add_argument("--reason", help="why: recorded in the audit log")


def _residency_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", action="append", metavar="REGION",
                   help="data residency: served only by deployments in this region; repeat for several")
    p.add_argument("--any-region", action="store_true", help="remove the region restriction (update)")
    p.add_argument("--required-tag", action="append", metavar="TAG",
                   help="data residency: served only by deployments carrying this tag; repeat for several")


def _residency_body(body: dict[str, Any], args: argparse.Namespace) -> None:
    if args.any_region:
        body["allowed_regions"] = None
    else:
        _set(body, "allowed_regions", args.region)
    _set(body, "required_tags", args.required_tag)


def _list_args(p: argparse.ArgumentParser, default: int | None = None) -> None:
    p.add_argument("--limit", type=int, default=default, metavar="N",
                   help="show at most N rows" + (f" (default {default})" if default else " (default: all)"))


def add_commands(sub: Any) -> None:
    """Add ``keys``, ``tenants``, ``subscriptions`` and ``audit`` to the ``gateway`` parser."""
    common = _common()

    keys = sub.add_parser("keys", help="API keys: create, list, show, update, revoke, rotate, digest")
    ks = keys.add_subparsers(dest="keys_command", required=True)
    p = ks.add_parser("create", parents=[common], help="create a key; prints the full key once")
    p.add_argument("--tenant", help="owning tenant (a tenant admin token: its own, the default)")
    _key_fields(p)
    p.add_argument("--quiet", "-q", action="store_true", help="print only the full key")
    p.set_defaults(func=_with_client(keys_create))
    p = ks.add_parser("list", parents=[common], help="list keys")
    p.add_argument("--tenant", help="only this tenant's keys")
    p.add_argument("--state", choices=["active", "revoked"])
    _list_args(p)
    p.set_defaults(func=_with_client(keys_list))
    p = ks.add_parser("show", parents=[common], help="show one key")
    p.add_argument("key_id")
    p.set_defaults(func=_with_client(keys_show))
    p = ks.add_parser("update", parents=[common], help="change a key's name, scopes, expiry, labels")
    p.add_argument("key_id")
    _key_fields(p)
    p.add_argument("--no-expiry", action="store_true", help="remove the expiry")
    p.set_defaults(func=_with_client(keys_update))
    p = ks.add_parser("revoke", parents=[common], help="revoke a key for good")
    p.add_argument("key_id")
    p.add_argument("--reason", help="why: recorded in the audit log")
    p.set_defaults(func=_with_client(keys_revoke))
    p = ks.add_parser("rotate", parents=[common], help="give a key a new secret; prints the full key once")
    p.add_argument("key_id")
    p.add_argument("--grace", type=_duration, metavar="DURATION",
                   help="how long the old secret keeps working (default: [auth] rotation_grace; 0: none)")
    p.add_argument("--reason", help="why: recorded in the audit log")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the full key")
    p.set_defaults(func=_with_client(keys_rotate))
    p = ks.add_parser("digest", help="print the digest of a key or admin token read from standard input")
    p.add_argument("--pepper-env", metavar="NAME",
                   help="environment variable holding the [auth] pepper: an hmac-sha256 digest")
    p.set_defaults(func=keys_digest)

    tenants = sub.add_parser("tenants", help="tenants: create, list, show, update, delete")
    ts = tenants.add_subparsers(dest="tenants_command", required=True)
    p = ts.add_parser("create", parents=[common], help="create a tenant")
    p.add_argument("tenant_id")
    _tenant_fields(p)
    p.set_defaults(func=_with_client(tenants_create))
    p = ts.add_parser("list", parents=[common], help="list tenants")
    _list_args(p)
    p.set_defaults(func=_with_client(tenants_list))
    p = ts.add_parser("show", parents=[common], help="show one tenant")
    p.add_argument("tenant_id")
    p.set_defaults(func=_with_client(tenants_show))
    p = ts.add_parser("update", parents=[common], help="change a tenant")
    p.add_argument("tenant_id")
    _tenant_fields(p)
    p.set_defaults(func=_with_client(tenants_update))
    p = ts.add_parser("delete", parents=[common], help="delete a tenant (revoke its keys first)")
    p.add_argument("tenant_id")
    p.add_argument("--reason", help="why: recorded in the audit log")
    p.set_defaults(func=_with_client(tenants_delete))

    subs = sub.add_parser("subscriptions", help="model subscriptions: request, list, approve, reject, revoke")
    ss = subs.add_subparsers(dest="subscriptions_command", required=True)
    p = ss.add_parser("request", parents=[common], help="ask for access to an approval-gated model")
    p.add_argument("model")
    p.add_argument("--tenant", help="the subscribing tenant (a tenant admin token: its own, the default)")
    p.add_argument("--reason", help="why: recorded in the audit log")
    p.set_defaults(func=_with_client(subscriptions_request))
    p = ss.add_parser("list", parents=[common], help="list subscriptions")
    p.add_argument("--tenant")
    p.add_argument("--model")
    p.add_argument("--state", choices=["pending", "approved", "rejected", "revoked"])
    _list_args(p)
    p.set_defaults(func=_with_client(subscriptions_list))
    for decision, text, need in (("approve", "approve (or grant) a subscription", False),
                                 ("reject", "reject a pending subscription", True),
                                 ("revoke", "revoke an approved subscription", True)):
        p = ss.add_parser(decision, parents=[common], help=f"{text} (operator)")
        p.add_argument("tenant")
        p.add_argument("model")
        p.add_argument("--reason", required=need, help="why: recorded in the audit log")
        p.set_defaults(func=_with_client(_decide(decision)))

    audit = sub.add_parser("audit", help="the audit log")
    aus = audit.add_subparsers(dest="audit_command", required=True)
    p = aus.add_parser("list", parents=[common], help="list audit entries, newest first")
    p.add_argument("--tenant")
    p.add_argument("--target", help="a tenant id, key id or TENANT/MODEL")
    p.add_argument("--action", help="e.g. key.revoke, subscription.approve")
    p.add_argument("--oldest-first", action="store_true")
    _list_args(p, default=50)
    p.set_defaults(func=_with_client(audit_list))

    from gateway.admin.usage_cli import add_usage_command

    add_usage_command(sub, common)


def _tenant_fields(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="display name")
    p.add_argument("--model", action="append", metavar="MODEL",
                   help="model or glob pattern the tenant's keys may use; repeat for several (default: *)")
    p.add_argument("--limit-policy", metavar="NAME", help="a limit policy of the config (\"\" clears it)")
    p.add_argument("--budget", metavar="NAME", help="a budget of the config (\"\" clears it)")
    p.add_argument("--label", action="append", type=_label, metavar="KEY=VALUE", help="repeat for several")
    _residency_args(p)
    p.add_argument("--reason", help="why: recorded in the audit log")
