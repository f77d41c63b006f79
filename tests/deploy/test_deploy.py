"""The deployment files, parsed and checked against the code they run (no Docker engine or cluster needed).

Compose file, Dockerfile, Kubernetes manifests, Redis config, Grafana dashboard, Prometheus alerts and
the runbook: required keys, commands that the ``ctrelay`` CLI really has (with options it accepts),
probes on routes the ingest app and the sandbox really serve, Redis stream names and consumer group
from :mod:`worker.core.keys`, environment variables that :class:`worker.core.settings.Settings` really reads, and
metric names that the source really defines.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml

from worker.core.destinations import parse_destinations
from worker.core.keys import Keys
from worker.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
IMAGE = "ctrelay"  # the image name in the manifests (kustomize `images:` maps it to a registry)


# ---------------------------------------------------------------- helpers


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in of_kind(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}"
    return found[0]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return list(workload["spec"]["template"]["spec"]["containers"])


def cli_commands() -> dict[str, Any]:
    """The registered ``ctrelay`` subcommands, as (typer's) click commands."""
    from worker.cli import app

    return dict(getattr(typer.main.get_command(app), "commands", {}))


def celery_options(name: str) -> set[str]:
    """Options of the Celery command that ``ctrelay <name>`` passes extra arguments to."""
    if name == "worker":
        from celery.bin.worker import worker as command
    elif name == "beat":
        from celery.bin.beat import beat as command
    elif name == "flower":  # Flower's own options are tornado options
        from flower.options import options

        return {f"--{option}" for option in options._options}
    else:
        return set()
    return {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}


def check_ctrelay_args(args: list[str], where: str) -> None:
    """``args`` is a real ``ctrelay`` (sub)command with options it (or the Celery command behind it) accepts."""
    assert args, f"{where}: no command"
    commands, path, rest = cli_commands(), [], list(args)
    command: Any = None
    while rest and not rest[0].startswith("-") and (command is None or hasattr(command, "commands")):
        word = rest.pop(0)
        assert word in commands, (
            f"{where}: `ctrelay {' '.join([*path, word])}` is not a command (have: {sorted(commands)})"
        )
        command, path = commands[word], [*path, word]
        commands = dict(getattr(command, "commands", {}))
    assert command is not None, f"{where}: no command"
    assert not hasattr(command, "commands"), f"{where}: `ctrelay {' '.join(path)}` needs a subcommand"
    name = path[0]
    own = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    passes_through = bool(command.context_settings.get("ignore_unknown_options")) or bool(
        command.context_settings.get("allow_extra_args")
    )
    accepted = own | (celery_options(name) if passes_through else set())
    for arg in rest:
        if arg.startswith("-"):
            option = arg.split("=", 1)[0]
            assert option in accepted, f"{where}: `ctrelay {' '.join(path)}` does not accept {option}"
    # The command line parses (values of the right type, required options present).
    ctx = command.make_context(f"ctrelay {' '.join(path)}", list(rest), resilient_parsing=False)
    ctx.close()


def settings_env_names() -> set[str]:
    names = set()
    for field_name, info in Settings.model_fields.items():
        names.add(f"CTRELAY_{field_name.upper()}")
        alias = info.validation_alias
        if alias is not None:
            names.update(str(choice) for choice in getattr(alias, "choices", [alias]))
    return names


def source_metric_names() -> set[str]:
    """Every ``ctrelay_*`` metric the code defines, without the ``_total`` suffix prometheus-client adds."""
    names = set()
    for path in [*ROOT.joinpath("worker").rglob("*.py"), *ROOT.joinpath("ingest").rglob("*.py")]:
        for match in re.finditer(r"""["'](ctrelay_[a-z0-9_]+)["']""", path.read_text()):
            names.add(base_metric(match.group(1)))
    return names


def base_metric(name: str) -> str:
    return re.sub(r"_(total|bucket|sum|count|created)$", "", name)


def metrics_in(text: str) -> set[str]:
    return {base_metric(name) for name in re.findall(r"\bctrelay_[a-z0-9_]+", text)}


def ingest_routes() -> set[str]:
    """The paths the real ingest application serves (built, not started: no Redis call is made)."""
    from ingest.app import create_app
    from worker.core.destinations import Destination, Destinations
    from worker.core.settings import Config

    config = Config(Settings(), Destinations([Destination(write_key="wk", account_id="A", passcode="p")]))
    return {getattr(route, "path", "") for route in create_app(config).routes}


def url_path(command: list[str]) -> tuple[int, str]:
    """The port and path of the URL in a healthcheck command."""
    url = re.search(r"https?://[^'\" ]+", " ".join(command))
    assert url, f"no URL in {command}"
    parts = urlsplit(url.group(0))
    return int(parts.port or 80), parts.path


def relay_services() -> dict[str, dict[str, Any]]:
    return {
        name: svc for name, svc in compose()["services"].items() if svc.get("image", "").startswith("${CTRELAY_IMAGE")
    }


def expand(value: str) -> str:
    """Compose interpolation with defaults: ``${X:-d}`` → ``d``."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_is_multistage_slim_non_root_with_ctrelay_entrypoint() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(stages) >= 2
    assert all(stage == "python:3.11-slim" for stage in stages)
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users, "the image must not run as root"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root")
    assert f"--uid {uid}" in text
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", text, re.MULTILINE)
    assert entrypoint
    assert json.loads(entrypoint.group(1)) == ["ctrelay"]
    # Every pod runs as that same user.
    for kind in ("Deployment",):
        for workload in of_kind(kind):
            if containers(workload)[0]["image"] == IMAGE:
                assert str(workload["spec"]["template"]["spec"]["securityContext"]["runAsUser"]) == uid
    # The image holds the code the entry point imports, and the build context sends exactly that.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore
    for line in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for source in line.split():
            assert f"!{source.rstrip('/')}" in ignore, f"{source} is not sent to the build"
            assert (ROOT / source).exists(), source
    assert "COPY worker" in text
    assert "COPY ingest" in text
    assert 'ctrelay = "worker.cli:app"' in (ROOT / "pyproject.toml").read_text()


# ---------------------------------------------------------------- docker compose


def redis_conf_directives(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_redis_conf_is_durable_and_never_evicts() -> None:
    directives = redis_conf_directives((DEPLOY / "redis.conf").read_text())
    assert "appendonly yes" in directives
    assert "appendfsync everysec" in directives
    assert "maxmemory-policy noeviction" in directives
    # Kubernetes runs the same configuration.
    conf = named("ConfigMap", "ctrelay-redis-conf")["data"]["redis.conf"]
    assert redis_conf_directives(conf) == directives


def _bytes(size: str) -> int:
    """A Redis (``4gb``), Kubernetes (``5Gi``) or compose (``5g``) memory size in bytes."""
    match = re.fullmatch(r"(\d+)\s*([kmg]?)i?b?", size.strip().lower())
    assert match, size
    return int(match[1]) * 1024 ** " kmg".index(match[2] or " ")


def test_redis_memory_limits_and_the_backlog_cap_agree() -> None:
    """The backlog cap trips well before Redis is full; the container limits leave room for AOF rewrites."""
    directives = redis_conf_directives((DEPLOY / "redis.conf").read_text())
    (maxmemory,) = [_bytes(d.split()[1]) for d in directives if d.startswith("maxmemory ")]
    assert Settings().backlog_cap * 512 <= maxmemory / 4  # a queued message is ~0.5 KB (runbook)
    (container,) = containers(named("StatefulSet", "ctrelay-redis"))
    for limit in (container["resources"]["limits"]["memory"], compose()["services"]["redis"]["mem_limit"]):
        assert _bytes(str(limit)) >= 1.2 * maxmemory


def test_compose_has_every_role_with_health_checks() -> None:
    doc = compose()
    services = doc["services"]
    assert {"redis", "ingest", "worker", "flower", "sandbox"} <= set(services)
    redis = services["redis"]
    assert redis["command"] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    assert "./deploy/redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis["volumes"]
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    for name in ("redis", "ingest", "worker", "flower", "sandbox"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    for name, service in relay_services().items():
        assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        env = service["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        mount = f":{env['CTRELAY_DESTINATIONS']}:ro"
        assert any(volume.endswith(mount) for volume in service["volumes"]), name


def test_compose_worker_scales() -> None:
    worker = compose()["services"]["worker"]
    # `docker compose up --scale worker=N` needs no fixed name and no published port.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["stop_grace_period"]


def test_compose_commands_are_real_ctrelay_commands() -> None:
    for name, service in relay_services().items():
        assert "entrypoint" not in service, f"{name}: the image's entrypoint is ctrelay"
        check_ctrelay_args([expand(str(arg)) for arg in service["command"]], f"compose service {name}")


def test_a_scheduler_runs_exactly_when_the_worker_needs_one() -> None:
    """Workers schedule their own drains (a ticker per worker); a ``ctrelay beat`` would need one replica."""
    has_beat = "beat" in cli_commands()
    assert ("beat" in compose()["services"]) == has_beat
    schedulers = [d for d in of_kind("Deployment") if containers(d)[0].get("args", [None])[0] == "beat"]
    assert len(schedulers) == (1 if has_beat else 0)
    for deployment in schedulers:
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        assert not [
            s for s in of_kind("ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        ]


def test_compose_health_checks_hit_real_routes() -> None:
    services = compose()["services"]
    port, path = url_path(services["ingest"]["healthcheck"]["test"])
    assert port == 8000
    assert path in ingest_routes()
    assert "--port" in services["ingest"]["command"]
    assert services["ingest"]["command"][services["ingest"]["command"].index("--port") + 1] == "8000"
    port, path = url_path(services["sandbox"]["healthcheck"]["test"])
    assert path in sandbox_routes()
    assert str(port) in services["sandbox"]["command"]
    port, path = url_path(services["worker"]["healthcheck"]["test"])
    assert str(port) == services["worker"]["environment"]["CTRELAY_METRICS_PORT"]


def sandbox_routes() -> set[str]:
    """The paths the real sandbox application serves."""
    from worker.sandbox.faults import Faults, FaultState
    from worker.sandbox.server import create_app
    from worker.sandbox.state import Sandbox

    return {getattr(route, "path", "") for route in create_app(Sandbox(FaultState(Faults()))).routes}


def test_compose_and_example_destinations_agree() -> None:
    doc = compose()
    env = {k: expand(str(v)) for k, v in relay_services()["ingest"]["environment"].items()}
    destinations = parse_destinations(
        tomllib.loads((DEPLOY / "destinations.example.toml").read_text()), env=env, source="example"
    )
    sandbox = doc["services"]["sandbox"]["command"]
    accounts = expand(sandbox[sandbox.index("--accounts") + 1])
    for destination in destinations.values():
        assert destination.endpoint == "http://sandbox:8900"
        assert destination.passcode is not None
        assert f"{destination.account_id}:{destination.passcode.get_secret_value()}" in accounts.split(",")


def test_compose_and_kubernetes_set_only_real_settings() -> None:
    known = settings_env_names()
    passcode_envs = {"CT_PASSCODE_SANDBOX", "CT_PASSCODE_1"}
    for name, service in relay_services().items():
        for variable in service["environment"]:
            assert variable in known | passcode_envs, f"compose {name}: {variable} is not a setting"
    for variable in named("ConfigMap", "ctrelay-config")["data"]:
        assert variable in known, f"ConfigMap ctrelay-config: {variable} is not a setting"


# ---------------------------------------------------------------- Kubernetes


def test_every_manifest_has_the_required_keys() -> None:
    docs = manifests()
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"]["name"].startswith("ctrelay"), doc["metadata"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


KUBERNETES_VERSION = "1.30"
CUSTOM_KINDS = {"ScaledObject"}  # KEDA's CRD: no schema shipped; checked field by field below


def test_manifests_match_the_kubernetes_schemas() -> None:
    """Every built-in resource validates against Kubernetes' OpenAPI schema (strict: no unknown field)."""
    import kubernetes_validate

    checked = 0
    for doc in manifests():
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= 10


def workloads() -> Iterator[dict[str, Any]]:
    for doc in manifests():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield doc


def test_workloads_are_consistent() -> None:
    for workload in workloads():
        name = workload["metadata"]["name"]
        selector = workload["spec"]["selector"]["matchLabels"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        for container in containers(workload):
            assert container["resources"]["requests"], name
            ports = {port["name"] for port in container.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                get = container.get(probe, {}).get("httpGet")
                if get:
                    assert get["port"] in ports, f"{name}: {probe} on unknown port {get['port']}"
            for ref in container.get("envFrom", []):
                if "configMapRef" in ref:
                    named("ConfigMap", ref["configMapRef"]["name"])
                if "secretRef" in ref:
                    named("Secret", ref["secretRef"]["name"])
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in volume:
                named("ConfigMap", volume["configMap"]["name"])


def matches_a_workload(selector: dict[str, str]) -> bool:
    return any(selector.items() <= w["spec"]["template"]["metadata"]["labels"].items() for w in workloads())


def test_services_and_disruption_budgets_select_workloads() -> None:
    for service in of_kind("Service"):
        assert matches_a_workload(service["spec"]["selector"]), service["metadata"]["name"]
    budgets = {pdb["metadata"]["name"]: pdb for pdb in of_kind("PodDisruptionBudget")}
    assert {"ctrelay-ingest", "ctrelay-worker"} <= set(budgets)
    for name, pdb in budgets.items():
        assert matches_a_workload(pdb["spec"]["selector"]["matchLabels"]), name
        assert "minAvailable" in pdb["spec"] or "maxUnavailable" in pdb["spec"], name


def test_only_relay_pods_reach_redis() -> None:
    policy = named("NetworkPolicy", "ctrelay-redis")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == named("StatefulSet", "ctrelay-redis")["spec"]["template"]["metadata"]["labels"]
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    for name in ("ctrelay-ingest", "ctrelay-worker", "ctrelay-flower"):
        assert allowed.items() <= named("Deployment", name)["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] == 6379


def test_relay_containers_run_real_ctrelay_commands() -> None:
    for workload in workloads():
        for container in containers(workload):
            if container["image"] != IMAGE:
                continue
            assert "command" not in container, "the image's entrypoint is ctrelay"
            check_ctrelay_args([str(arg) for arg in container["args"]], f"{workload['metadata']['name']}")


def test_ingest_probes_hit_real_routes_and_it_shuts_down_gracefully() -> None:
    routes = ingest_routes()
    deployment = named("Deployment", "ctrelay-ingest")
    (container,) = containers(deployment)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in routes
    port = container["args"][container["args"].index("--port") + 1]
    assert {p["containerPort"] for p in container["ports"]} == {int(port)}
    assert container["lifecycle"]["preStop"]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 10
    assert named("Service", "ctrelay-ingest")["spec"]["ports"][0]["targetPort"] == "http"


def test_ingress_serves_the_tracking_api_over_tls_at_the_public_url() -> None:
    ingress = named("Ingress", "ctrelay-ingest")
    service = named("Service", "ctrelay-ingest")
    [rule] = ingress["spec"]["rules"]
    [tls] = ingress["spec"]["tls"]
    assert rule["host"] in tls["hosts"]
    assert tls["secretName"]
    [path] = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/v1", "Prefix")  # the Tracking API only: no /admin, no /metrics
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}
    public = named("ConfigMap", "ctrelay-config")["data"]["CTRELAY_PUBLIC_URL"]
    assert Settings(public_url=public).public_url == f"https://{rule['host']}"
    assert "cert-manager.io/cluster-issuer" in (K8S / "ingress.yaml").read_text()  # shown, as a comment


def test_ingest_autoscales_on_cpu() -> None:
    hpa = named("HorizontalPodAutoscaler", "ctrelay-ingest")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ctrelay-ingest"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_worker_scales_on_the_length_of_every_partition_stream() -> None:
    """XLEN, not the group's lag (wrong after a Redis restart): the streams hold only undelivered entries."""
    config = named("ConfigMap", "ctrelay-config")["data"]
    keys = Keys(config["CTRELAY_REDIS_PREFIX"])
    partitions = int(config["CTRELAY_PARTITIONS"])
    scaled = named("ScaledObject", "ctrelay-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    named("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis-streams"}
    assert sorted(t["metadata"]["stream"] for t in triggers) == sorted(keys.stream(n) for n in range(partitions))
    for trigger in triggers:
        assert int(trigger["metadata"]["streamLength"]) > 0
        assert not {"lagCount", "pendingEntriesCount", "consumerGroup"} & set(trigger["metadata"])
        host = trigger["metadata"]["address"].split(":")[0]
        named("Service", host)
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= partitions


def test_worker_shuts_down_gracefully_and_exposes_metrics() -> None:
    deployment = named("Deployment", "ctrelay-worker")
    (container,) = containers(deployment)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > Settings().upload_timeout_s * 2, "a batch in flight must be able to finish its upload"
    metrics_port = int(named("ConfigMap", "ctrelay-config")["data"]["CTRELAY_METRICS_PORT"])
    assert {p["containerPort"] for p in container["ports"]} == {metrics_port}
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)


def test_secret_holds_every_passcode_and_the_admin_token() -> None:
    secret = named("Secret", "ctrelay-secrets")["stringData"]
    assert "CTRELAY_ADMIN_TOKEN" in secret
    assert "REDIS_URL" in secret
    document = tomllib.loads(named("ConfigMap", "ctrelay-destinations")["data"]["destinations.toml"])
    destinations = parse_destinations(document, env=secret, source="ConfigMap ctrelay-destinations")
    assert destinations
    for table in document["destinations"]:
        assert "passcode" not in table, "passcodes belong in the Secret (passcode_env)"
        assert table["passcode_env"] in secret
    mount = {
        m["mountPath"]
        for m in containers(named("Deployment", "ctrelay-worker"))[0]["volumeMounts"]
        if m.get("readOnly")
    }
    destinations_path = named("ConfigMap", "ctrelay-config")["data"]["CTRELAY_DESTINATIONS"]
    assert str(Path(destinations_path).parent) in mount


# ---------------------------------------------------------------- observability


def test_dashboard_queries_only_metrics_the_code_defines() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "ctrelay-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used = metrics_in("\n".join(exprs))
    missing = used - source_metric_names()
    assert not missing, f"the dashboard queries metrics no code defines: {sorted(missing)}"
    # What an operator looks at: throughput in and out, lag, retries, dead letters, CleverTap latency and 429s.
    for needed in (
        "ctrelay_ingest_messages_accepted",
        "ctrelay_records_delivered",
        "ctrelay_stream_lag",
        "ctrelay_records_retried",
        "ctrelay_deadletters_written",
        "ctrelay_upload_duration_seconds",
    ):
        assert needed in used, needed
    assert any('status="429"' in expr for expr in exprs)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "ctrelay-alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alerts_are_complete_and_use_real_metrics() -> None:
    rules = alert_rules()
    assert len({r["alert"] for r in rules}) == len(rules)
    used = metrics_in("\n".join(r["expr"] for r in rules))
    missing = used - source_metric_names()
    assert not missing, f"alerts on metrics no code defines: {sorted(missing)}"
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def scrape_jobs(config: dict[str, Any]) -> set[str]:
    """Job names a Prometheus config produces: plain job names, and ``job`` labels set by relabelling."""
    jobs = set()
    for job in config["scrape_configs"]:
        jobs.add(job["job_name"])
        relabels = job.get("relabel_configs", [])
        for relabel in relabels:
            if relabel.get("target_label") == "job":
                keep = [
                    r["regex"] for r in relabels if r.get("action") == "keep" and "component" in r["source_labels"][0]
                ]
                jobs |= {relabel["replacement"].replace("$1", c) for c in keep[0].split("|")}
    return jobs


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-kubernetes.yml"])
def test_alerts_name_scrape_jobs_that_exist(name: str) -> None:
    """Both Prometheus configs load the rules and produce the job names the alert rules use."""
    config = yaml.safe_load((DEPLOY / "prometheus" / name).read_text())
    assert config["rule_files"] == ["ctrelay-alerts.yml"]
    used = set(re.findall(r'job="([^"]+)"', "\n".join(rule["expr"] for rule in alert_rules())))
    assert {"ctrelay-ingest", "ctrelay-worker"} <= used
    assert used - {"redis"} <= scrape_jobs(config)


def test_compose_monitoring_profile_wires_prometheus_and_grafana() -> None:
    services = compose()["services"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["ctrelay-ingest"]["static_configs"][0]["targets"] == ["ingest:8000"]
    worker_port = services["worker"]["environment"]["CTRELAY_METRICS_PORT"]
    assert str(jobs["ctrelay-worker"]["dns_sd_configs"][0]["port"]) == worker_port
    assert jobs["ctrelay-worker"]["dns_sd_configs"][0]["names"] == ["worker"]
    assert jobs["redis"]["static_configs"][0]["targets"][0].split(":")[0] in services
    for name in ("prometheus", "grafana", "redis-exporter"):
        assert services[name]["profiles"] == ["monitoring"]
        for volume in services[name].get("volumes", []):
            assert (ROOT / volume.split(":")[0]).exists(), volume
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert urlsplit(datasource["datasources"][0]["url"]).hostname == "prometheus"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/ctrelay.yml").read_text())
    mounted = {v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert any(m.startswith(provider["providers"][0]["options"]["path"]) for m in mounted)


def runbook_anchors() -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", (DEPLOY / "runbook.md").read_text(), re.MULTILINE):
        anchors.add(re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_every_alert_has_a_runbook_section() -> None:
    anchors = runbook_anchors()
    for rule in alert_rules():
        path, anchor = rule["annotations"]["runbook"].split("#")
        assert path == "deploy/runbook.md"
        assert anchor == rule["alert"].lower()
        assert anchor in anchors, f"runbook.md has no section for {rule['alert']}"


def test_runbook_covers_the_operators_questions() -> None:
    anchors = runbook_anchors()
    for needed in (
        "sizing-redis",
        "scaling-workers",
        "clevertap-outage",
        "wrong-passcode",
        "poison-message",
        "replaying-dead-letters",
        "user-deletion",
    ):
        assert needed in anchors, needed


def ctrelay_lines(text: str) -> list[str]:
    """Every ``ctrelay ...`` command in the fenced code blocks of a markdown text (after a path or ``exec``)."""
    found = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            for part in re.split(r"&&|\|\||;|\|", line.split(" #", 1)[0]):
                match = re.search(r"(?:^|[\s/])ctrelay(\s.*)$", part.strip())
                if match and match.group(1).strip():
                    found.append("ctrelay" + match.group(1).rstrip())
    return found


@pytest.mark.parametrize("document", ["deploy/runbook.md", "README.md"])
def test_documented_commands_are_real(document: str) -> None:
    """Every ``ctrelay ...`` line in a code block of the runbook and the README is a real (sub)command."""
    lines = ctrelay_lines((ROOT / document).read_text())
    assert len(lines) >= 3
    for line in lines:
        check_ctrelay_args(shlex.split(line)[1:], f"{document}: `{line}`")


def test_runbook_names_only_real_settings() -> None:
    text = (DEPLOY / "runbook.md").read_text()
    named_settings = set(re.findall(r"\bCTRELAY_[A-Z0-9_]+", text))
    assert named_settings
    assert not named_settings - settings_env_names()


@pytest.mark.parametrize("path", ["docker-compose.yml", *[str(p.relative_to(ROOT)) for p in K8S.glob("*.yaml")]])
def test_yaml_files_parse_without_duplicate_keys(path: str) -> None:
    class Strict(yaml.SafeLoader):
        pass

    def construct_mapping(loader: Strict, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=deep)
            assert key not in seen or key == "<<", f"{path}: duplicate key {key!r}"
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    list(yaml.load_all((ROOT / path).read_text(), Loader=Strict))
