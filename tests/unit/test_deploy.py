"""``deploy/``, ``examples/cluster.toml`` and ``docs/deployment.md`` hold together, checked offline.

- The Kubernetes manifests validate against the API schemas that ``kubernetes-validate`` bundles (strict:
  an unknown field is an error), with the network blocked, for the oldest and the newest Kubernetes we
  name; and they agree with each other and with the config they mount (selectors, ports, probes on
  ``/readyz`` and ``/healthz``, a grace period that covers preStop + drain, every ``env:`` reference fed
  from a Secret, workers sized by a CPU limit).
- The compose file: both nodes share the redis service through ``[store] url``, Redis persists (AOF), the
  mock probes its own port (the image's check is the gateway's), start order waits for health.
- The Dockerfile: a non-root user that owns the writable data directory, the config path, the health check.
- Every config file shipped here passes ``gateway check``; every ``gateway`` command line in
  docs/deployment.md parses with the real CLI.
"""

from __future__ import annotations

import copy
import re
import shlex
import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.cli import build_parser
from gateway.config import load_config, load_config_text

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
#: the oldest Kubernetes the manifests are written for (policy/v1 PDB, autoscaling/v2 HPA), and the newest
#: whose schemas the pinned kubernetes-validate carries
K8S_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]


# -- helpers ------------------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to resolve a name or open a connection fails the test: validation must be offline."""

    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The configs name their upstream key by reference; loading one resolves it, as at startup."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


def manifests() -> dict[str, dict[str, Any]]:
    """The resources kustomization.yaml lists, by kind."""
    out: dict[str, dict[str, Any]] = {}
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            assert doc["kind"] not in out, f"two {doc['kind']}s"
            out[doc["kind"]] = doc
    return out


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return data


def container() -> dict[str, Any]:
    containers = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def configmap_toml() -> str:
    data = manifests()["ConfigMap"]["data"]
    assert list(data) == ["gateway.toml"]
    return str(data["gateway.toml"])


def env_refs(text: str) -> set[str]:
    """The environment variables a config names (``"env:NAME"``)."""
    return set(re.findall(r'"env:([A-Za-z_][A-Za-z0-9_]*)"', text))


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of each Dockerfile line, continuations joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    lines = dockerfile()
    last_from = max(i for i, (word, _) in enumerate(lines) if word == "FROM")
    return lines[last_from:]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"expected a duration in seconds, found {duration!r}"
    return float(match.group(1))


# -- Kubernetes: schemas ----------------------------------------------------------------------------------


def test_the_kustomization_lists_every_manifest_and_only_those() -> None:
    listed = kustomization()["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert set(manifests()) == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                                "HorizontalPodAutoscaler"}


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_manifests_validate_against_the_bundled_schemas_offline(no_network: None, k8s_version: str) -> None:
    for kind, doc in manifests().items():
        try:
            kubernetes_validate.validate(doc, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind} is not valid for Kubernetes {k8s_version}: {exc.message}")


def test_the_validator_is_not_a_formality(no_network: None) -> None:
    """A misspelt field and a wrong type are caught, so a pass above means something."""
    deployment = manifests()["Deployment"]
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = typo["spec"]["template"][
        "spec"]["containers"][0].pop("readinessProbe")
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["replicas"] = "three"
    for bad in (typo, wrong):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


# -- Kubernetes: the manifests agree --------------------------------------------------------------------


def test_selectors_ports_and_targets_agree() -> None:
    m = manifests()
    deployment = m["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert m["Service"]["spec"]["selector"] == selector
    assert m["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    target = m["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    config = load_config_text(configmap_toml())
    assert ports == {"http": config.server.port}
    assert config.server.host == "0.0.0.0"
    assert [p["targetPort"] for p in m["Service"]["spec"]["ports"]] == ["http"]
    assert kustomization()["images"][0]["name"] == container()["image"]


def test_probes_use_readyz_and_healthz() -> None:
    c = container()
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_the_grace_period_covers_prestop_and_the_drain() -> None:
    """Kubernetes kills the pod at terminationGracePeriodSeconds, counted from the start of preStop; the
    supervisor kills its workers at drain_timeout + 5 after SIGTERM, which follows preStop."""
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    pre_stop = float(command[1])
    assert pre_stop >= 5, "endpoints need a few seconds to drop a terminating pod"
    server = load_config_text(configmap_toml()).server
    assert server.drain_delay == 0  # preStop already keeps the pod serving while it leaves the endpoints
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + server.drain_timeout + 5
    strategy = manifests()["Deployment"]["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_the_config_is_mounted_where_the_command_reads_it() -> None:
    c = container()
    args = c["args"]
    assert args[:1] == ["serve"]
    config_path = Path(args[args.index("--config") + 1])
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in manifests()["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    config_mount = next(m for m in mounts.values() if Path(m["mountPath"]) == config_path.parent)
    assert "subPath" not in config_mount, "a subPath mount never sees ConfigMap updates"
    assert config_mount["readOnly"] is True
    source = volumes[config_mount["name"]]["configMap"]
    assert source["name"] == manifests()["ConfigMap"]["metadata"]["name"]
    assert config_path.name in manifests()["ConfigMap"]["data"]
    # the data directory and /tmp are writable volumes under a read-only root filesystem
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in mounts.values() if not m.get("readOnly")}
    assert {"/var/lib/gateway", "/tmp"} <= writable


def test_every_secret_the_config_names_comes_from_a_secret() -> None:
    text = configmap_toml()
    env = {e["name"]: e for e in container().get("env", [])}
    assert env_refs(text), "the example config names its upstream key by reference"
    for name in env_refs(text):
        assert name in env, f"env:{name} is not set in the Deployment"
        assert "secretKeyRef" in env[name]["valueFrom"], f"{name} must come from a Secret"


def test_workers_follow_a_cpu_limit_and_the_pod_runs_as_the_image_user() -> None:
    assert load_config_text(configmap_toml()).server.workers == 0
    resources = container()["resources"]
    assert "cpu" in resources["limits"], "workers = 0 sizes to the cgroup quota: give a CPU limit"
    pod_security = manifests()["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    user = dict(final_stage())["USER"]
    assert f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}" == user
    assert pod_security["fsGroup"] == pod_security["runAsGroup"]


def test_the_configmap_config_passes_gateway_check() -> None:
    config = load_config_text(configmap_toml())
    assert config.store.url.startswith("redis://"), "replicas share their state through Redis"
    assert config.metrics.enabled and config.metrics.path == "/metrics"
    annotations = manifests()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == config.metrics.path
    assert annotations["prometheus.io/port"] == str(config.server.port)


# -- compose ------------------------------------------------------------------------------------------------


def test_compose_nodes_share_the_redis_service() -> None:
    services = compose()["services"]
    nodes = [name for name in services if name.startswith("gateway-")]
    assert len(nodes) >= 2
    for name in nodes:
        node = services[name]
        sources = [v.split(":")[0] for v in node["volumes"]]
        config_mount = next(v for v in node["volumes"] if v.split(":")[1] == "/etc/gateway/gateway.toml")
        config = load_config(str(DEPLOY / config_mount.split(":")[0]))
        assert config.store.url.startswith("redis://")
        redis_host = config.store.url.split("://")[1].split(":")[0]
        assert redis_host in services, f"{name}'s store is not a compose service"
        assert node["depends_on"][redis_host]["condition"] == "service_healthy"
        assert node["command"][node["command"].index("--config") + 1] == "/etc/gateway/gateway.toml"
        # each node keeps its own data directory
        assert any(v.split(":")[1] == "/var/lib/gateway" for v in node["volumes"]), sources
        # workers follow the container's CPU quota; compose waits for the drain before it kills
        assert config.server.workers == 0 and node["cpus"] >= 1
        assert seconds(node["stop_grace_period"]) > config.server.drain_timeout + 5
    data_volumes = [v.split(":")[0] for n in nodes for v in services[n]["volumes"] if ":/var/lib/" in v]
    assert len(set(data_volumes)) == len(nodes), "nodes must not share one SQLite data directory"


def test_compose_redis_persists_with_aof() -> None:
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert any(v.split(":")[1] == "/data" and v.split(":")[0] in compose()["volumes"] for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_compose_mock_has_its_own_health_check() -> None:
    """The image's HEALTHCHECK probes the gateway's /readyz on 8080; the mock listens elsewhere."""
    mock = compose()["services"]["mock"]
    command = mock["command"]
    assert command[0] == "mock"
    port = command[command.index("--port") + 1]
    probe = " ".join(mock["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/healthz" in probe
    assert f":{port}/" in probe and ":8080/" not in probe
    for name, service in compose()["services"].items():
        if name.startswith("gateway-"):
            assert service["depends_on"]["mock"]["condition"] == "service_healthy"


def test_compose_load_balancer_sends_to_every_node() -> None:
    services = compose()["services"]
    nodes = {name for name in services if name.startswith("gateway-")}
    conf = (DEPLOY / "nginx.compose.conf").read_text()
    upstreams = set(re.findall(r"server (gateway-\d+):8080", conf))
    assert upstreams == nodes
    assert set(services["lb"]["depends_on"]) == nodes


def test_compose_files_it_mounts_exist() -> None:
    for service in compose()["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), source
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


# -- the image -----------------------------------------------------------------------------------------------


def test_the_image_runs_as_a_non_root_user_owning_its_data_directory() -> None:
    stage = final_stage()
    words = dict(stage)
    uid, _, gid = words["USER"].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    setup = " ".join(args for word, args in stage if word == "RUN")
    assert re.search(rf"useradd [^&]*--uid {uid} [^&]*gateway", setup)
    assert re.search(rf"groupadd [^&]*--gid {gid} gateway", setup)
    assert re.search(r"install -d -o gateway -g gateway [^&]*/var/lib/gateway", setup)
    # the writable directory is where the gateway runs (the embedded default's relative SQLite file)
    assert words["WORKDIR"] == "/var/lib/gateway"
    assert '"/var/lib/gateway"' in words["VOLUME"]
    assert "/etc/gateway" in setup
    # the user is set after everything that needs root
    order = [word for word, _ in stage]
    assert order.index("USER") > max(i for i, w in enumerate(order) if w == "RUN")


def test_the_image_health_check_and_entry_point() -> None:
    words = dict(final_stage())
    port = words["EXPOSE"]
    assert f"http://127.0.0.1:{port}/readyz" in words["HEALTHCHECK"]
    assert words["ENTRYPOINT"] == '["gateway"]'
    assert words["CMD"].startswith('["serve"')
    assert words["STOPSIGNAL"] == "SIGTERM"
    build = " ".join(args for word, args in dockerfile() if word == "RUN")
    assert "GATEWAY_REQUIRE_EXTENSIONS=1 pip wheel" in build


def test_the_dockerignore_lets_in_what_the_dockerfile_copies_and_no_local_build() -> None:
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert patterns[0] == "*", "allow-list: everything else stays out (.git, venvs, caches, bench results)"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for word, args in dockerfile():
        if word == "COPY" and "--from" not in args:
            *sources, _ = shlex.split(args)
            for source in sources:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
                assert (ROOT / source).exists(), source
    # extensions and generated C built for this machine's Python must not reach the image's build
    for pattern in ("**/*.so", "**/*.c", "**/__pycache__"):
        assert pattern in patterns


# -- configs and docs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["deploy/gateway.compose.toml", "examples/cluster.toml"])
def test_shipped_configs_pass_gateway_check(path: str) -> None:
    config = load_config(str(ROOT / path))
    assert config.store.url.startswith("redis://")


def test_the_cluster_example_runs_against_a_local_redis_and_mock() -> None:
    text = (ROOT / "examples" / "cluster.toml").read_text()
    data = tomllib.loads(text)
    assert data["store"]["url"].startswith("redis://127.0.0.1:")
    assert any(p.get("base_url", "").startswith("http://127.0.0.1:9000/") for p in data["providers"].values())


def doc_commands(path: Path) -> list[str]:
    """Every ``gateway ...`` command line in the fenced shell blocks of ``path`` (continuations joined),
    and the ``ExecStart=`` of its systemd units."""
    out = []
    for block in re.findall(r"```(?:bash|sh|console|ini)\n(.*?)```", path.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip().removeprefix("ExecStart=")
            for part in re.split(r"&&|\|\||;|\||&", line):
                part = part.strip()
                words = shlex.split(part) if part else []
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words = words[1:]  # VAR=value before the command
                if words and (words[0] == "gateway" or words[0].endswith("/bin/gateway")):
                    out.append(" ".join(["gateway", *words[1:]]))
    return out


@pytest.mark.parametrize("doc", ["docs/deployment.md", "README.md"])
def test_every_gateway_command_in_the_docs_parses(doc: str) -> None:
    commands = doc_commands(ROOT / doc)
    assert commands
    parser = build_parser()
    for command in commands:
        if command == "gateway --version":
            continue  # an action that prints and exits; test_hardening_ops runs it
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"{doc}: `{command}` is not a valid gateway command")


def test_the_deployment_doc_names_files_that_exist() -> None:
    text = (ROOT / "docs" / "deployment.md").read_text()
    for path in set(re.findall(r"`((?:deploy|examples|docs)/[A-Za-z0-9_./-]+)`", text)):
        assert (ROOT / path).exists(), path
