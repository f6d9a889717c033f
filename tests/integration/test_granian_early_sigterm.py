"""A SIGTERM that reaches the granian front end while its workers are still starting stops the gateway.

The workers' loop hands a signal to granian's shutdown handler only while it runs, and granian's shutdown
signal set before its server runs blocks for good: a SIGTERM that came during a worker's config load or
engine startup left that worker serving (or hung) after its main process had stopped, and the gateway
never exited (``gateway.server.rsgi``: ``_held_signals`` and ``_chained``). The signal's arrival is swept
across the workers' startup, from their spawn to their readiness.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from .conftest import MOCK_KEY, require_frontend
from .helpers import HOST, ServerProcess, children_of, free_port, gateway_toml, pid_alive, wait_for

#: seconds from the workers' spawn to the SIGTERM: the first ones land in their imports and config load,
#: the middle ones in the engine's startup, the last ones around granian's serving start
DELAYS = [0.0, 0.02, 0.05, 0.08, 0.12, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7]


@pytest.mark.parametrize("delay", DELAYS)
def test_sigterm_during_the_workers_startup_stops_the_gateway(tmp_path: Path, mock_port: int,
                                                               delay: float) -> None:
    require_frontend("granian")
    config = tmp_path / "gateway.toml"
    # a drain that could wait 600 s: only a worker that missed its SIGTERM keeps the gateway up past 60 s
    config.write_text(gateway_toml(mock_port, server={"drain_timeout": 600.0}))
    port = free_port()
    proc = ServerProcess("early-term", ["serve", "--workers", "2", "--host", HOST, "--port", str(port),
                                        "--server", "granian", "--config", str(config)],
                         tmp_path, port, env={"MOCK_KEY": MOCK_KEY}).start()
    try:
        assert proc.pid is not None
        main = proc.pid
        workers: set[int] = wait_for(lambda: children_of(main) if len(children_of(main)) == 2 else None,
                                     60.0, interval=0.005, what="granian's two workers")
        time.sleep(delay)  # where in their startup the signal lands (the variable of this test)
        proc.send_signal(signal.SIGTERM)
        assert proc.proc is not None
        try:
            code = proc.proc.wait(timeout=60.0)
        except Exception:
            raise AssertionError(f"the gateway did not stop after SIGTERM\n{proc.logs(records=False)}") from None
        assert code == 0, proc.logs(records=False)
        for pid in workers:
            wait_for(lambda pid=pid: not pid_alive(pid), 30.0, what=f"worker {pid} to exit")
    finally:
        proc.stop()
