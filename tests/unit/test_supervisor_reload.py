"""What the supervisor says about a reload's restart-only settings (``restart_only_changes``)."""

from __future__ import annotations

from gateway.config import load_config_text
from gateway.server.supervisor import restart_only_changes

BASE = """
[providers.mock]
type = "mock"

[models.m]
provider = "mock"
"""


def test_each_restart_only_change_is_named_against_the_started_config() -> None:
    started = load_config_text(BASE)
    assert restart_only_changes(started, load_config_text(BASE)) == []
    new = load_config_text(BASE + """
[server]
port = 9999
watch_interval = 2.0

[log]
call_records = false

[limits.policies.p]
requests_per_minute = 10

[cache]
enabled = true
""")
    assert restart_only_changes(started, new) == [
        "the listener settings changed (host, port, workers, frontend)",
        "[server] watch_interval changed",
        "[limits] (policies or budgets) turned on",
        "[cache] turned on",
        "call records ([log] call_records) turned off",
    ]
    # a setting changed and changed back is no change: the comparison is with what the workers run
    assert restart_only_changes(started, load_config_text(BASE + "[server]\nport = 8080\n")) == []
    assert restart_only_changes(new, started)[2:] == [
        "[limits] (policies or budgets) turned off", "[cache] turned off",
        "call records ([log] call_records) turned on",
    ]
