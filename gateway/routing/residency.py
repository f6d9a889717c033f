"""Data residency: which deployments may serve the requests of a key or tenant.

A key or tenant may name the deployment ``regions`` its requests may be served in, and the
``required_tags`` every deployment serving them must carry (``docs/routing.md``, "Data residency"). A
deployment matches a ``Residency`` when its ``region`` is one of the regions (when regions are named)
and its ``tags`` include every required tag (both, when both are named). A deployment without a
``region`` matches no region constraint.

Theory of operation:

    where                      | what happens
    ---------------------------+-------------------------------------------------------------------------
    key table build            | each key's effective ``Residency`` = its tenant's narrowed by its own
                               | (``narrow``: regions intersected, tags united), interned, on ``KeyEntry``
    access phase               | the model asked for has no matching deployment: 403 region_not_allowed
    budget downgrade (admit)   | the same for the model a budget moves the request to
    router, per request        | ``RouterCore.pick`` and every plan intersect their eligibility masks
                               | with the model's mask for the residency (memoized per router by object)
    retries and fallbacks      | only matching deployments; a fallback model with none is passed over
    every matching one is out  | 503 no_deployment_available from their state, never another deployment

A key can only narrow its tenant's constraint, never widen it: a region the key names that its tenant
does not is dropped (an empty intersection matches nothing: every routed request is refused with 403).

Equal constraints are one object (``residency`` interns them), so a router memoizes its mask by identity
and a request with a constraint pays one dict lookup per model it touches.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Sequence
from difflib import get_close_matches

__all__ = ["Residency", "narrow", "residency", "residency_problems"]

#: distinct constraints interned; past this the table is cleared (objects made before stay valid)
_MAX_INTERNED = 4096


class Residency:
    """A constraint on the deployments that may serve a request. Build with ``residency`` (interned)."""

    __slots__ = ("regions", "tags", "text")

    def __init__(self, regions: frozenset[str] | None, tags: frozenset[str]) -> None:
        #: the regions a deployment must be in (None: any region)
        self.regions = regions
        #: the tags a deployment must all carry
        self.tags = tags
        #: how messages name it: 'in region "eu"', 'in regions "eu", "fr" and tagged "gdpr"'
        self.text = _describe(regions, tags)

    def matches(self, region: str | None, tags: Collection[str]) -> bool:
        """Whether a deployment in ``region`` carrying ``tags`` may serve the request."""
        if self.regions is not None and region not in self.regions:
            return False
        return all(t in tags for t in self.tags)

    def __repr__(self) -> str:
        return f"<Residency {self.text}>"


_interned: dict[tuple[frozenset[str] | None, frozenset[str]], Residency] = {}


def residency(regions: Iterable[str] | None, tags: Iterable[str] = ()) -> Residency | None:
    """The constraint of ``regions`` (None: any region) and ``tags``, interned; None when it allows
    every deployment."""
    r = frozenset(regions) if regions is not None else None
    t = frozenset(tags)
    if r is None and not t:
        return None
    key = (r, t)
    found = _interned.get(key)
    if found is None:
        if len(_interned) >= _MAX_INTERNED:
            _interned.clear()
        found = _interned[key] = Residency(r, t)
    return found


def narrow(outer: Residency | None, inner: Residency | None) -> Residency | None:
    """``inner`` (a key's) within ``outer`` (its tenant's): the regions both allow, every tag of each."""
    if outer is None:
        return inner
    if inner is None:
        return outer
    if outer.regions is None:
        regions = inner.regions
    elif inner.regions is None:
        regions = outer.regions
    else:
        regions = outer.regions & inner.regions
    return residency(regions, outer.tags | inner.tags)


def _describe(regions: frozenset[str] | None, tags: frozenset[str]) -> str:
    parts: list[str] = []
    if regions is not None:
        if not regions:
            parts.append("in no region (the key's regions and its tenant's have none in common)")
        else:
            names = ", ".join(f'"{r}"' for r in sorted(regions))
            parts.append(f"in region {names}" if len(regions) == 1 else f"in regions {names}")
    if tags:
        parts.append("tagged " + ", ".join(f'"{t}"' for t in sorted(tags)))
    return " and ".join(parts)


# --------------------------------------------------------------------------------------------------------
# Semantic checks of a key's or tenant's residency (``gateway check``)

_Path = tuple[str | int, ...]


def residency_problems(
    path: _Path,
    regions: Sequence[str] | None,
    tags: Sequence[str],
    known_regions: Collection[str],
    known_tags: Collection[str],
    within: Sequence[str] | None = None,
    within_name: str = "",
) -> Iterator[tuple[_Path, str]]:
    """What is wrong with ``regions`` and ``required_tags`` at ``path``: empty or repeated names, names no
    deployment of the file has (a typo would refuse every request), and, for a key of a tenant declared
    in the file (``within``: the tenant's regions), regions its tenant does not allow."""
    if regions is not None:
        if not regions:
            yield (*path, "regions"), "must list at least one region (leave it out to allow every region)"
        yield from _names((*path, "regions"), regions, known_regions, "region", "has region")
        if within is not None:
            for i, region in enumerate(regions):
                if region and region not in within:
                    yield (
                        (*path, "regions", i),
                        f"{json.dumps(region)} is not one of tenant {within_name}'s regions "
                        f"({', '.join(json.dumps(r) for r in within)}): a key can only narrow its tenant's",
                    )
    yield from _names((*path, "required_tags"), tags, known_tags, "tag", "carries tag")


def _names(
    path: _Path, names: Sequence[str], known: Collection[str], what: str, verb: str
) -> Iterator[tuple[_Path, str]]:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not name:
            yield (*path, i), "must not be empty"
        elif name in seen:
            yield (*path, i), f"{json.dumps(name)} is listed twice"
        elif name not in known:
            hint = get_close_matches(name, sorted(known), n=1)
            listed = ", ".join(json.dumps(k) for k in sorted(known)) or "none"
            suffix = f'; did you mean "{hint[0]}"?' if hint else f" (the deployments' {what}s: {listed})"
            yield (*path, i), f"no deployment {verb} {json.dumps(name)}{suffix}"
        seen.add(name)
