"""The granian front end's process model under the same stresses as the native one's
(test_hardening_proc.py): a reload racing a rewrite of the file never leaves two workers on different
configs, workers do not outlive a main process killed with SIGKILL, and a stop signal sent to the whole
process group (Ctrl-C in a terminal) ends every worker cleanly (docs/frontends.md)."""

from __future__ import annotations

import os
import signal

import pytest

from .conftest import StartGateway, require_frontend
from .helpers import assert_serves, call_records, gateway_toml, pid_alive, wait_for
from .test_hardening_proc import NEW_MODEL, OTHER_MODEL, _logs, _port_free, _probe_models, _workers
from .test_lifecycle import _refused, _try_serves

pytestmark = pytest.mark.timeout(120)


def test_granian_workers_never_serve_different_configs(start_gateway: StartGateway, mock_port: int) -> None:
    require_frontend("granian")
    gw = start_gateway(gateway_toml(mock_port), workers=2, frontend="granian", name="granian-same-config")
    assert gw.config_path is not None
    late, _ = sorted(_workers(gw.pid, 2))
    wait_for(lambda: _logs(gw).count("engine started") >= 2, 30.0, what="both workers to start")
    os.kill(late, signal.SIGSTOP)
    try:
        gw.config_path.write_text(gateway_toml(mock_port, extra_models=NEW_MODEL))
        gw.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "granian main: config reloaded from" in _logs(gw), 15.0, what="the main's reload")
        # rewritten between the main's validation and the stopped worker's turn
        gw.config_path.write_text(gateway_toml(mock_port, extra_models=OTHER_MODEL))
    finally:
        os.kill(late, signal.SIGCONT)
    wait_for(lambda: _logs(gw).count("config reloaded from") >= 3, 15.0, what="both workers to reload")
    wait_for(lambda: _try_serves(gw.port), 20.0, what="the gateway to serve")
    _probe_models(gw.port, {"new-model": 200, "other-model": 404})


def test_granian_main_killed_with_sigkill_takes_its_workers_with_it(start_gateway: StartGateway,
                                                                    mock_port: int) -> None:
    require_frontend("granian")
    gw = start_gateway(gateway_toml(mock_port), workers=2, frontend="granian", name="granian-orphans")
    workers = _workers(gw.pid, 2)
    wait_for(lambda: _logs(gw).count("engine started") >= 2, 30.0, what="both workers to start")
    os.kill(gw.pid, signal.SIGKILL)
    gw.process.wait(10)
    wait_for(lambda: not any(pid_alive(p) for p in workers), 30.0, what="the orphaned workers to exit")
    wait_for(lambda: _refused(gw.port) and _port_free(gw.port), 10.0, what="the port to be free")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_granian_gateway_signalled_as_a_process_group_stops_cleanly(start_gateway: StartGateway, mock_port: int,
                                                                    sig: signal.Signals) -> None:
    """Ctrl-C in a terminal (SIGINT) or ``kill -- -PGID`` (SIGTERM) reaches every process of the group, so
    each worker is signalled twice: its own signal, then its main's. granian's shutdown signal blocked a
    worker for good when set twice; the main SIGKILLed it ``drain_timeout + 5`` s later, and the worker's
    engine never shut down (the call records it held lost). Every worker now stops its engine."""
    require_frontend("granian")
    gw = start_gateway(gateway_toml(mock_port), workers=2, frontend="granian", name=f"granian-group-{sig.name}")
    _workers(gw.pid, 2)
    wait_for(lambda: _logs(gw).count("engine started") >= 2, 30.0, what="both workers to start")
    for _ in range(6):
        assert_serves(gw.port)
    os.killpg(gw.pid, sig)
    gw.process.wait(30.0)  # (a stuck worker: SIGKILLed by its main after drain_timeout + 5 s)
    logs = _logs(gw)
    assert logs.count("engine stopped") == 2, logs[-3000:]
    records = call_records(gw.process, lambda rs: True)
    assert sum(1 for r in records if r["path"] == "/v1/chat/completions") == 6
