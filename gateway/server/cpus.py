"""How many workers this process may run busy: the CPUs it is allowed, not the cores the host has.

A container limited to 2 CPUs on a 64-core host still sees 64 cores in ``os.cpu_count()``; one worker per
core would then be 64 processes sharing 2 CPUs' worth of time (the kernel's CFS quota throttles them all
every period), plus 64 upstream pools and 64 shares of every per-worker limit. So the default worker count
is the smallest of:

- the CPUs the process may be scheduled on (``os.sched_getaffinity``: cpusets, ``taskset``, Kubernetes'
  static CPU manager);
- the CFS bandwidth quota of its cgroup and of every ancestor up to the cgroup mount, rounded up:
  cgroup v2 ``cpu.max`` (``"150000 100000"`` = 1.5 CPUs, ``"max 100000"`` = none), cgroup v1
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota ``-1`` = none);

and at least 1. The cgroup is found as the kernel shows it: ``/proc/self/cgroup`` names the process's
cgroup path per hierarchy, ``/proc/self/mountinfo`` where each hierarchy is mounted and which part of it
(a container sees its own cgroup as the mount's root). Every read is best effort: a file that is missing
or unreadable means "no limit from here".

``worker_count`` is what every part of a worker asks (the routers and the limits divide per-worker shares
by it): the count the supervisor really started (``GATEWAY_WORKERS``, set by ``gateway serve`` before it
forks) when there is one, else the configured ``server.workers``, else this default.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["ENV_WORKERS", "cgroup_cpu_limit", "default_workers", "usable_cpus", "worker_count"]

#: the number of workers ``gateway serve`` started, for the workers themselves
ENV_WORKERS = "GATEWAY_WORKERS"

_PROC_SELF = Path("/proc/self")


def default_workers(proc: Path = _PROC_SELF, *, affinity: int | None = None) -> int:
    """One worker per usable CPU: ``usable_cpus``, rounded up, at least 1."""
    return max(1, math.ceil(usable_cpus(proc, affinity=affinity)))


def worker_count(configured: int) -> int:
    """The workers of this gateway: the count started (``GATEWAY_WORKERS``), else ``configured``, else the
    default (``configured`` 0)."""
    started = os.environ.get(ENV_WORKERS, "")
    if started.isdigit() and int(started) > 0:
        return int(started)
    return configured if configured > 0 else default_workers()


def usable_cpus(proc: Path = _PROC_SELF, *, affinity: int | None = None) -> float:
    """The CPUs this process may use: its affinity, lowered to its cgroup's CPU quota when there is one.
    ``affinity``: the number of CPUs it may be scheduled on (default: asked of the kernel)."""
    cpus = float(affinity if affinity is not None else _affinity())
    limit = cgroup_cpu_limit(proc)
    return cpus if limit is None else min(cpus, limit)


def cgroup_cpu_limit(proc: Path = _PROC_SELF) -> float | None:
    """The tightest CPU quota (in CPUs, e.g. 1.5) over the process's cgroups and their ancestors, cgroup v1
    and v2 alike; None when there is none (or no cgroup filesystem to read)."""
    memberships = _memberships(_read(proc / "cgroup"))
    limits: list[float] = []
    for mount in _cgroup_mounts(_read(proc / "mountinfo")):
        fstype, root, point, options = mount
        path = memberships.get("" if fstype == "cgroup2" else "cpu")
        if path is None or (fstype == "cgroup" and "cpu" not in options):
            continue
        for directory in _up_to(point, _cgroup_dir(point, root, path)):
            quota = _quota_v2(directory) if fstype == "cgroup2" else _quota_v1(directory)
            if quota is not None:
                limits.append(quota)
    return min(limits) if limits else None


def _affinity() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1  # pragma: no cover - platforms without sched_getaffinity


def _memberships(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` -> controller -> cgroup path; the v2 hierarchy under ``""``.

    Lines are ``ID:CONTROLLERS:PATH``: ``0::/PATH`` for v2, ``4:cpu,cpuacct:/PATH`` for v1."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            out[""] = path
        for controller in controllers.split(","):
            if controller:
                out[controller] = path
    return out


def _cgroup_mounts(text: str) -> list[tuple[str, str, str, frozenset[str]]]:
    """``/proc/self/mountinfo`` -> (fstype, root, mount point, super options) of each cgroup mount.

    A line is ``ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS``."""
    out = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(rest[2].split(","))
        out.append((rest[0], _unescape(fields[3]), _unescape(fields[4]), options))
    return out


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    if "\\" not in field:
        return field
    return field.encode("latin-1").decode("unicode_escape")


def _cgroup_dir(point: str, root: str, path: str) -> Path:
    """The directory of cgroup ``path`` in a hierarchy whose ``root`` is mounted at ``point``.

    In a container the mount's root is the container's own cgroup (and ``path`` is either that same
    path or "/" under a cgroup namespace): both land on the mount point."""
    if root != "/" and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root):]
    directory = Path(point) / path.lstrip("/")
    return directory if directory.is_dir() else Path(point)


def _up_to(top: str, directory: Path) -> list[Path]:
    """``directory`` and its parents up to the mount point ``top`` (a quota on any ancestor applies)."""
    top_path = Path(top)
    out = [directory]
    while directory != top_path and top_path in directory.parents:
        directory = directory.parent
        out.append(directory)
    return out


def _quota_v2(directory: Path) -> float | None:
    """``cpu.max``: ``"QUOTA PERIOD"`` in microseconds, or ``"max PERIOD"`` for no limit."""
    parts = _read(directory / "cpu.max").split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return _ratio(parts[0], parts[1])


def _quota_v1(directory: Path) -> float | None:
    """``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``; a quota of -1 is no limit."""
    return _ratio(_read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us"))


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota.strip()), int(period.strip())
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""
