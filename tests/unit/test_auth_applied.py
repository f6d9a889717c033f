"""The node's marks of applied change versions (``gateway.auth.applied``): what the admin API waits on."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from gateway.auth.applied import AppliedMark, late_workers, read_marks, wait_applied


def test_a_mark_is_read_live_with_its_version(tmp_path: Path) -> None:
    mark = AppliedMark.create(str(tmp_path))
    try:
        assert list(read_marks(str(tmp_path)).values()) == [-1]  # nothing applied yet
        mark.publish(7)
        assert list(read_marks(str(tmp_path)).values()) == [7]
        assert late_workers(str(tmp_path), 8) == [os.getpid()]
        assert late_workers(str(tmp_path), 7) == []
        # reading (in the same process, with its own descriptor) leaves the owner's lock in place
        assert list(read_marks(str(tmp_path)).values()) == [7]
    finally:
        mark.close()
    assert read_marks(str(tmp_path)) == {} and list(tmp_path.iterdir()) == []


def test_a_dead_workers_mark_is_not_waited_for_and_is_removed(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "from gateway.auth.applied import AppliedMark\n"
        "AppliedMark.create(sys.argv[1]).publish(3)\n"
        "os._exit(0)  # killed, in effect: the mark is not removed\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    assert len(list(tmp_path.iterdir())) == 1
    assert read_marks(str(tmp_path)) == {}
    assert list(tmp_path.iterdir()) == []


def test_other_files_of_the_directory_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / ".applied-1-abcd.tmp").write_bytes(b"")
    (tmp_path / "gateway-metrics-snapshot").write_bytes(b"x")
    assert read_marks(str(tmp_path)) == {}
    assert len(list(tmp_path.iterdir())) == 2


def test_wait_applied_returns_once_every_worker_holds_the_version(tmp_path: Path) -> None:
    async def body() -> None:
        mark = AppliedMark.create(str(tmp_path))
        try:
            mark.publish(1)
            # nobody moves: the wait ends at its bound and names the late worker
            assert await wait_applied(str(tmp_path), 2, 0.05) == [os.getpid()]
            waiting = asyncio.ensure_future(wait_applied(str(tmp_path), 2, 30.0))
            await asyncio.sleep(0)
            assert not waiting.done()
            mark.publish(2)
            assert await waiting == []
        finally:
            mark.close()
        assert await wait_applied(str(tmp_path), 99, 30.0) == []  # no live worker: nothing to wait for

    asyncio.run(body())
