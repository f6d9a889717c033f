"""``gateway.redisconn``: the URL forms it reads, the ones it refuses, and what it hides in messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, load_config_text
from gateway.config.check import check_main
from gateway.redisconn import RedisTarget, SlotMap, moved_to, parse_url, redact, redirected


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://user:secret@redis.internal:6380/2",
        "unix:///run/redis.sock?db=1",
    ],
)
def test_one_server_urls_go_to_redis_py_as_they_are(url: str) -> None:
    assert parse_url(url) == RedisTarget(kind="single", url=url)


def test_the_store_prefix_is_not_passed_on() -> None:
    target = parse_url("redis://127.0.0.1:6379/0?prefix=blue&socket_timeout=2")
    assert target.url == "redis://127.0.0.1:6379/0?socket_timeout=2"
    sentinel = parse_url("redis+sentinel://h:26379/mymaster?prefix=blue")
    assert sentinel.url == "redis+sentinel://h:26379/mymaster"


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    target = parse_url(
        "redis+sentinel://:s%40cret@10.0.0.1:26379,sentinel-b,[::1]:26380/mymaster/3"
        "?sentinel_password=sp&socket_timeout=0.5&socket_connect_timeout=0.25"
    )
    assert target.kind == "sentinel"
    assert target.hosts == (("10.0.0.1", 26379), ("sentinel-b", 26379), ("::1", 26380))
    assert (target.service, target.db) == ("mymaster", 3)
    assert (target.username, target.password) == (None, "s@cret")
    assert (target.sentinel_username, target.sentinel_password) == (None, "sp")
    assert (target.socket_timeout, target.socket_connect_timeout) == (0.5, 0.25)
    assert not target.tls


def test_a_sentinel_url_without_a_database_uses_0_and_tls_has_its_scheme() -> None:
    target = parse_url("rediss+sentinel://ops:pw@h1:1,h2:2/gw")
    assert (target.service, target.db, target.tls) == ("gw", 0, True)
    assert (target.username, target.password) == ("ops", "pw")


def test_a_cluster_url_lists_seed_nodes() -> None:
    target = parse_url("redis+cluster://:pw@n1:7000,n2,n3:7002")
    assert target.kind == "cluster"
    assert target.hosts == (("n1", 7000), ("n2", 6379), ("n3", 7002))
    assert target.password == "pw"
    assert parse_url("redis+cluster://n1:7000/0").hosts == (("n1", 7000),)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memcached://h:1", "unknown Redis URL scheme"),
        ("redis+sentinel://h:26379", "names the master"),
        ("redis+sentinel://h:26379/", "names the master"),
        ("redis+sentinel://h:26379/m/0/extra", "names the master"),
        ("redis+sentinel://h:26379/m/zero", "database must be a whole number"),
        ("redis+sentinel://h:26379,,h2/m", "empty entry"),
        ("redis+sentinel://h:port/m", "port of 'h:port'"),
        ("redis+sentinel://h:70000/m", "between 1 and 65535"),
        ("redis+sentinel://:26379/m", "malformed host"),
        ("redis+sentinel://[::1/m", "malformed Redis URL"),
        ("redis+sentinel://h,[::1]x/m", "malformed host"),
        ("redis+sentinel://h/m?db=2", "unknown parameter 'db'"),
        ("redis+sentinel://h/m?socket_timeout=-1", "above 0"),
        ("redis+sentinel://h/m?socket_timeout=soon", "number of seconds"),
        ("redis+cluster://n1:7000/3", "one database"),
    ],
)
def test_malformed_urls_are_refused_with_a_reason(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_url(url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:pw@h:6379/0", "redis://user:***@h:6379/0"),
        (
            "redis+sentinel://:pw@a:1,b:2/m/0?sentinel_password=sp&prefix=x",
            "redis+sentinel://:***@a:1,b:2/m/0?sentinel_password=%2A%2A%2A&prefix=x",
        ),
    ],
)
def test_redact_hides_every_password(url: str, shown: str) -> None:
    assert redact(url) == shown


# -- SlotMap: where a cluster serves each key


def _reply() -> list[list[object]]:
    """A CLUSTER SLOTS reply of three masters (the second without an address), replicas after each."""
    return [
        [0, 5460, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
        [5461, 10922, [b"", 7001, b"id2"]],
        [10923, 16383, ["10.0.0.3", 7002, "id3"]],
    ]


def test_a_slot_map_routes_keys_by_their_hash_tag() -> None:
    from redis.crc import key_slot

    slots = SlotMap.from_reply(_reply(), ("seed", 7100))
    assert slots
    assert slots.masters() == [("10.0.0.1", 7000), ("seed", 7001), ("10.0.0.3", 7002)]
    for key in (b"{gw:lim:acme}", b"{gw:lim:acme}:c", b"{gw:bud:key/abc}", b"plain"):
        slot = key_slot(key)
        expected = ("10.0.0.1", 7000) if slot <= 5460 else ("seed", 7001) if slot <= 10922 else ("10.0.0.3", 7002)
        assert slots.node_of(key) == expected, key
    # a limit's bucket and its counter share the braces, so one slot and one node
    assert slots.node_of(b"{gw:lim:k}") == slots.node_of(b"{gw:lim:k}:c")
    assert slots.node_of(None) == ("10.0.0.1", 7000)


def test_a_slot_no_master_serves_is_a_connection_error() -> None:
    import redis.exceptions
    from redis.crc import key_slot

    slots = SlotMap([(0, 100, ("a", 1))])
    key = next(k for k in (b"a", b"b", b"c", b"d") if key_slot(k) > 100)
    with pytest.raises(redis.exceptions.ConnectionError, match="no cluster master serves slot"):
        slots.node_of(key)
    assert not SlotMap()


# -- the configuration: [store] url and its replication keys


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _store_errors(store: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text("[store]\n" + store, "gateway.toml")
    return info.value.errors


def test_the_sentinel_example_loads_and_passes_the_check(capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(EXAMPLES / "redis_sentinel.toml")
    assert parse_url(config.store.url).kind == "sentinel"
    assert config.store.min_replicas_acked == 1
    assert check_main(str(EXAMPLES / "redis_sentinel.toml")) == 0
    assert "ok:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "url",
    ["redis://h:6379/0", "redis+sentinel://a:26379,b/mymaster/1", "rediss+cluster://:pw@n1:7000,n2:7001"],
)
def test_every_redis_form_is_a_valid_store_url(url: str) -> None:
    assert load_config_text(f'[store]\nurl = "{url}"\n', "gateway.toml").store.url == url


def test_a_malformed_redis_url_is_a_config_error_with_its_reason() -> None:
    (error,) = _store_errors('url = "redis+sentinel://a:26379"\n')
    assert "store.url" in error and "names the master" in error
    (error,) = _store_errors('url = "memcached://a"\n')
    assert "redis+sentinel://" in error


def test_replication_keys_are_checked() -> None:
    errors = _store_errors('url = "redis://h"\nmin_replicas_acked = -1\nreplica_ack_timeout = 0\n')
    assert any("store.min_replicas_acked" in e and "0 or more" in e for e in errors), errors
    assert any("store.replica_ack_timeout" in e for e in errors), errors
    (error,) = _store_errors('url = "redis://h"\nreplica_ack_timeout = 30.0\n')
    assert "store.replica_ack_timeout" in error and "at most 5 seconds" in error


def test_a_redirection_is_recognised_in_both_of_redis_py_s_forms() -> None:
    import redis.exceptions

    assert redirected(redis.exceptions.MovedError("3999 127.0.0.1:6381"))
    assert redirected(redis.exceptions.ResponseError("MOVED 3999 127.0.0.1:6381"))
    assert redirected(redis.exceptions.ResponseError("ASK 3999 127.0.0.1:6381"))
    assert redirected(redis.exceptions.ResponseError("CLUSTERDOWN The cluster is down"))
    assert not redirected(redis.exceptions.ResponseError("ERR unknown command"))
    assert not redirected(redis.exceptions.ResponseError("MOVEDX"))
    assert not redirected(["MOVED 1 h:1"])


def test_a_moved_reply_names_the_slot_s_new_master_and_the_map_takes_it() -> None:
    import redis.exceptions
    from redis.crc import key_slot

    asked = ("10.0.0.1", 7000)
    assert moved_to(redis.exceptions.MovedError("3999 10.0.0.2:7001"), asked) == (3999, ("10.0.0.2", 7001))
    assert moved_to(redis.exceptions.ResponseError("MOVED 3999 10.0.0.2:7001"), asked) == (3999, ("10.0.0.2", 7001))
    assert moved_to(redis.exceptions.ResponseError("MOVED 3999 :7001"), asked) == (3999, ("10.0.0.1", 7001))
    assert moved_to(redis.exceptions.ResponseError("ASK 3999 10.0.0.2:7001"), asked) is None
    assert moved_to(redis.exceptions.ResponseError("MOVED nonsense"), asked) is None
    assert moved_to(b"OK", asked) is None

    slots = SlotMap.from_reply(_reply(), ("seed", 7100))
    key = b"{gw:lim:moving}"
    slots.move(key_slot(key), ("10.0.0.9", 7009))
    assert slots.node_of(key) == ("10.0.0.9", 7009)
    assert ("10.0.0.9", 7009) in slots.masters()


def test_sentinel_and_cluster_connections_time_out_unless_told_otherwise() -> None:
    from gateway.redisconn import connection_pool, node_connection

    pool = connection_pool(parse_url("redis+sentinel://127.0.0.1:1/m/2"))
    assert (pool.connection_kwargs["socket_timeout"], pool.connection_kwargs["socket_connect_timeout"]) == (10.0, 5.0)
    assert pool.connection_kwargs["db"] == 2
    told = connection_pool(parse_url("redis+sentinel://127.0.0.1:1/m?socket_timeout=0.3"), socket_timeout=None)
    assert told.connection_kwargs["socket_timeout"] == 0.3  # the URL wins over the caller
    caller = connection_pool(parse_url("redis+sentinel://127.0.0.1:1/m"), socket_timeout=None)
    assert caller.connection_kwargs["socket_timeout"] is None  # the caller's own choice stands
    conn = node_connection(parse_url("redis+cluster://:pw@127.0.0.1:1"), ("127.0.0.1", 7000))
    assert (conn.host, conn.port, conn.password, conn.socket_timeout) == ("127.0.0.1", 7000, "pw", 10.0)
