"""The per-key anomaly rule: EWMA baselines, the thresholds, the minimum volume, warm-up, forgetting."""

from __future__ import annotations

from gateway.observe.anomaly import AnomalyConfig, Detector, anomaly_problems

CFG = AnomalyConfig(enabled=True, window=10.0, alpha=0.2, warmup=3, min_requests=20, rate_factor=4.0,
                    min_rate=0.1, error_factor=3.0, min_error_rate=0.2)


def window(d: Detector, key: str, n: int, errors: int = 0) -> list[tuple[str, str]]:
    for i in range(n):
        d.add(key, "acme", i < errors)
    return [(f.key, f.kind) for f in d.close_window(0.0)]


def test_steady_traffic_is_never_flagged() -> None:
    d = Detector(CFG)
    for _ in range(50):
        assert window(d, "k", 100, errors=5) == []


def test_a_request_rate_jump_is_flagged_and_becomes_the_baseline() -> None:
    d = Detector(CFG)
    for _ in range(5):
        assert window(d, "k", 50) == []
    assert window(d, "k", 400) == [("k", "request_rate")]
    # sustained: the baseline follows, and the flag stops once it has caught up
    flagged = [window(d, "k", 400) for _ in range(20)]
    assert flagged[-1] == []
    assert window(d, "k", 190) == []  # under 4x of the new baseline


def test_an_error_rate_jump_is_flagged_with_both_thresholds() -> None:
    d = Detector(CFG)
    for _ in range(5):
        window(d, "k", 100, errors=2)
    assert window(d, "k", 100, errors=15) == []  # 15% < 2% + 20 points
    d2 = Detector(CFG)
    for _ in range(5):
        window(d2, "k", 100, errors=2)
    assert window(d2, "k", 100, errors=40) == [("k", "error_rate")]


def test_low_volume_and_new_keys_are_not_judged() -> None:
    d = Detector(CFG)
    assert window(d, "new", 1000, errors=1000) == []  # no baseline yet
    for _ in range(5):
        window(d, "k", 1)
    assert window(d, "k", 19, errors=19) == []  # under min_requests
    assert window(d, "k", 20, errors=20) == [("k", "request_rate"), ("k", "error_rate")]


def test_quiet_keys_are_forgotten_and_memory_is_bounded() -> None:
    d = Detector(CFG)
    window(d, "k", 5)
    for _ in range(d.forget_after):
        window(d, "other", 1)
    assert d.tracked == 1
    small = Detector(AnomalyConfig(max_keys=3))
    for i in range(10):
        small.add(f"k{i}", "t", False)
    assert small.tracked == 3


def test_config_problems() -> None:
    bad = AnomalyConfig(window=0.0, alpha=2.0, warmup=0, rate_factor=0.5, webhook="ftp://x")
    where = {p[1] for p, _ in anomaly_problems(bad)}
    assert where == {"window", "alpha", "warmup", "rate_factor", "webhook"}
    assert list(anomaly_problems(AnomalyConfig())) == []
