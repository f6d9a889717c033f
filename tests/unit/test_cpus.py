"""The default worker count: the CPU quota of the process's cgroup (v1 and v2) and its affinity.

Each test lays out a fake ``/proc/self`` (``cgroup`` and ``mountinfo``) and a fake cgroup filesystem under
``tmp_path``, as the kernel shows them on a host, in a container, and with the quota on an ancestor.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.server.cpus import ENV_WORKERS, cgroup_cpu_limit, default_workers, usable_cpus, worker_count


def fake_proc(tmp_path: Path, cgroup: str, mounts: list[str]) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text("".join(line + "\n" for line in mounts))
    return proc


def v2_mount(point: Path, root: str = "/") -> str:
    return f"30 23 0:26 {root} {point} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate"


def v1_mount(point: Path, controllers: str, root: str = "/") -> str:
    return f"32 31 0:29 {root} {point} rw,relatime shared:7 - cgroup cgroup rw,{controllers}"


def write(directory: Path, **files: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("__", ".")).write_text(text + "\n")
    return directory


# -- cgroup v2 -------------------------------------------------------------------------------------------


def test_v2_container_with_a_quota_of_one_and_a_half_cpus_runs_two_workers(tmp_path: Path) -> None:
    fs = write(tmp_path / "cgroup", cpu__max="150000 100000")
    proc = fake_proc(tmp_path, "0::/\n", [v2_mount(fs)])
    assert cgroup_cpu_limit(proc) == 1.5
    assert usable_cpus(proc, affinity=64) == 1.5
    assert default_workers(proc, affinity=64) == 2


def test_v2_without_a_quota_follows_the_affinity(tmp_path: Path) -> None:
    fs = write(tmp_path / "cgroup", cpu__max="max 100000")
    proc = fake_proc(tmp_path, "0::/\n", [v2_mount(fs)])
    assert cgroup_cpu_limit(proc) is None
    assert default_workers(proc, affinity=6) == 6


def test_affinity_below_the_quota_wins(tmp_path: Path) -> None:
    fs = write(tmp_path / "cgroup", cpu__max="800000 100000")
    proc = fake_proc(tmp_path, "0::/\n", [v2_mount(fs)])
    assert default_workers(proc, affinity=3) == 3


@pytest.mark.parametrize(
    ("parent", "leaf", "limit", "workers"),
    [
        # systemd: the service's own cgroup has no limit, its slice has 2 CPUs (the root has no cpu.max)
        ("200000 100000", "max 100000", 2.0, 2),
        # the tightest wins, wherever it is: half a CPU on the pod is still one worker
        ("400000 100000", "50000 100000", 0.5, 1),
    ],
)
def test_v2_quota_on_the_cgroup_or_an_ancestor(
    tmp_path: Path, parent: str, leaf: str, limit: float, workers: int
) -> None:
    fs = tmp_path / "cgroup"
    write(fs / "system.slice", cpu__max=parent)
    write(fs / "system.slice" / "gateway.service", cpu__max=leaf)
    proc = fake_proc(tmp_path, "0::/system.slice/gateway.service\n", [v2_mount(fs)])
    assert cgroup_cpu_limit(proc) == limit
    assert default_workers(proc, affinity=16) == workers


def test_v2_mount_whose_root_is_the_containers_own_cgroup(tmp_path: Path) -> None:
    # no cgroup namespace: /proc/self/cgroup names the host path, the mount's root is that same cgroup
    fs = write(tmp_path / "cgroup", cpu__max="300000 100000")
    proc = fake_proc(tmp_path, "0::/docker/abc123\n", [v2_mount(fs, root="/docker/abc123")])
    assert cgroup_cpu_limit(proc) == 3.0


def test_a_path_that_is_not_under_the_mount_falls_back_to_the_mount_point(tmp_path: Path) -> None:
    fs = write(tmp_path / "cgroup", cpu__max="100000 100000")
    proc = fake_proc(tmp_path, "0::/elsewhere/entirely\n", [v2_mount(fs)])
    assert cgroup_cpu_limit(proc) == 1.0


# -- cgroup v1 -------------------------------------------------------------------------------------------


def test_v1_cfs_quota(tmp_path: Path) -> None:
    cpu = write(tmp_path / "cgroup" / "cpu,cpuacct", cpu__cfs_quota_us="250000", cpu__cfs_period_us="100000")
    cgroup = "12:memory:/\n4:cpu,cpuacct:/\n1:name=systemd:/\n0::/\n"
    proc = fake_proc(tmp_path, cgroup, [v1_mount(cpu, "cpu,cpuacct")])
    assert cgroup_cpu_limit(proc) == 2.5
    assert default_workers(proc, affinity=32) == 3


def test_v1_quota_of_minus_one_is_no_limit(tmp_path: Path) -> None:
    cpu = write(tmp_path / "cgroup" / "cpu", cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    proc = fake_proc(tmp_path, "1:cpu:/\n2:cpuacct:/\n", [v1_mount(cpu, "cpu")])
    assert cgroup_cpu_limit(proc) is None
    assert default_workers(proc, affinity=2) == 2


def test_v1_nested_cgroup_and_a_mount_of_another_controller(tmp_path: Path) -> None:
    cpu = tmp_path / "cgroup" / "cpu"
    write(cpu / "kubepods" / "burstable" / "pod7", cpu__cfs_quota_us="100000", cpu__cfs_period_us="50000")
    memory = write(tmp_path / "cgroup" / "memory", cpu__cfs_quota_us="1000", cpu__cfs_period_us="100000")
    proc = fake_proc(
        tmp_path,
        "5:memory:/kubepods/burstable/pod7\n3:cpu:/kubepods/burstable/pod7\n",
        [v1_mount(memory, "memory"), v1_mount(cpu, "cpu")],
    )
    assert cgroup_cpu_limit(proc) == 2.0  # the memory hierarchy's files are not read


def test_hybrid_hosts_take_the_v1_quota(tmp_path: Path) -> None:
    cpu = write(tmp_path / "cgroup" / "cpu", cpu__cfs_quota_us="200000", cpu__cfs_period_us="100000")
    unified = write(tmp_path / "cgroup" / "unified")  # v2 without the cpu controller: no cpu.max
    proc = fake_proc(tmp_path, "1:cpu:/\n0::/\n", [v1_mount(cpu, "cpu"), v2_mount(unified)])
    assert cgroup_cpu_limit(proc) == 2.0


# -- nothing to read ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cpu_max", ["", "garbage", "0 100000", "100000 0", "1 2 3"])
def test_unreadable_quotas_are_no_limit(tmp_path: Path, cpu_max: str) -> None:
    fs = write(tmp_path / "cgroup", cpu__max=cpu_max)
    proc = fake_proc(tmp_path, "0::/\n", [v2_mount(fs)])
    assert cgroup_cpu_limit(proc) is None
    assert default_workers(proc, affinity=4) == 4


def test_no_proc_files_at_all(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path / "missing") is None
    assert default_workers(tmp_path / "missing", affinity=1) == 1


def test_mount_points_with_escaped_spaces(tmp_path: Path) -> None:
    fs = write(tmp_path / "cgroup fs", cpu__max="100000 100000")
    escaped = str(fs).replace(" ", "\\040")
    proc = fake_proc(tmp_path, "0::/\n", [f"30 23 0:26 / {escaped} rw - cgroup2 cgroup2 rw"])
    assert cgroup_cpu_limit(proc) == 1.0


def test_this_machine_gives_at_least_one_worker() -> None:
    assert default_workers() >= 1


# -- the count every part of a worker uses --------------------------------------------------------------


def test_worker_count_prefers_the_count_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_WORKERS, "3")
    assert worker_count(0) == 3
    assert worker_count(8) == 3  # `gateway serve --workers 3` over server.workers = 8


def test_worker_count_without_a_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_WORKERS, raising=False)
    assert worker_count(5) == 5
    assert worker_count(0) == default_workers()
    for bad in ("", "0", "-2", "two"):
        monkeypatch.setenv(ENV_WORKERS, bad)
        assert worker_count(5) == 5
