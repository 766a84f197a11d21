"""What an operator deploys, checked without a container engine: the Dockerfile by
hadolint and by its promises (multi-stage, non-root, exec-form `socialhub serve`,
HEALTHCHECK, SIGTERM), the Kubernetes manifests against the Kubernetes schemas
(kubernetes-validate, strict), the compose file against the compose specification's
schema (check-jsonschema ships it) and for its references, and every SOCIALHUB_* setting
they carry against socialhub's own configuration loader. The gateway configuration is
run for real by tests/e2e/test_gateway.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from starlette.routing import BaseRoute

from socialhub.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.33.0"  # the oldest release still supported upstream when written


def tool(name: str) -> str:
    """A command installed with the test extra (next to this Python) or on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found is not None, f"{name} is not installed: pip install -e '.[test]'"
    return found


def manifests() -> dict[str, list[dict[str, Any]]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(K8S.glob("*.yaml"))}


def k8s(kind: str) -> dict[str, Any]:
    found = [d for docs in manifests().values() for d in docs if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m)?", value)
    assert m is not None, value
    return float(m.group(1)) * (60 if m.group(2) == "m" else 1)


def check_settings(env: dict[str, str]) -> None:
    """Load these SOCIALHUB_* variables as socialhub would: unknown keys and bad values
    raise ConfigError naming the key."""
    load_settings(env=dict(env))


# -- the image ---------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of each instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_passes_the_dockerfile() -> None:
    done = subprocess.run([tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check above can fail: hadolint flags an untagged base and `cd` in RUN."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /src && pip install .\n")
    done = subprocess.run([tool("hadolint"), str(bad)], capture_output=True, text=True)
    assert done.returncode != 0 and "DL3006" in done.stdout and "DL3003" in done.stdout, done.stdout


def test_the_image_runs_socialhub_serve_as_a_user_and_stops_on_sigterm() -> None:
    steps = dockerfile()
    assert [w for w, _ in steps].count("FROM") == 2  # build, then the slim runtime
    assert all("slim" in args or args.startswith("${") for w, args in steps if w == "FROM")
    last = {w: args for w, args in steps}  # the last of each instruction wins
    assert last["ENTRYPOINT"] == '["socialhub"]' and last["CMD"] == '["serve"]'  # exec form: no shell
    user = last["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0
    assert last["STOPSIGNAL"] == "SIGTERM"
    assert "/healthz" in last["HEALTHCHECK"] and 'CMD ["python"' in last["HEALTHCHECK"]  # exec form too
    env = dict(re.findall(r"(SOCIALHUB_\w+)=(\S+)", last["ENV"]))
    assert env["SOCIALHUB_SERVER_HOST"] == "0.0.0.0"
    check_settings(env)


def test_dockerignore_lets_in_what_the_build_copies() -> None:
    allowed = [
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    ]
    assert "*" in (ROOT / ".dockerignore").read_text().splitlines()  # everything else stays out
    copied = [
        source for w, args in dockerfile() if w == "COPY" and "--from" not in args for source in args.split()[:-1]
    ]
    assert copied and all(source in allowed and (ROOT / source).exists() for source in copied), (copied, allowed)
    for source in allowed:
        assert (ROOT / source).exists(), source


# -- Kubernetes ----------------------------------------------------------------------------------


def test_manifests_match_the_kubernetes_schemas() -> None:
    found = manifests()
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == set(found) - {"kustomization.yaml"}
    kinds = set()
    for name, docs in found.items():
        if name == "kustomization.yaml":
            continue  # kustomize's own file, not an API object
        for doc in docs:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            kinds.add(doc["kind"])
    wanted = "Deployment Service Ingress HorizontalPodAutoscaler PodDisruptionBudget ConfigMap Secret Job"
    assert kinds >= set(wanted.split())


def test_the_schema_check_fails_a_bad_manifest() -> None:
    deployment = k8s("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    bad = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)
    typo = dict(container, readinesProbe=container["readinessProbe"])
    spec = {**deployment["spec"]["template"]["spec"], "containers": [typo]}
    bad = {**deployment, "spec": {**deployment["spec"], "template": {**deployment["spec"]["template"], "spec": spec}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_the_deployment_drains_within_its_grace() -> None:
    deployment, config = k8s("Deployment"), k8s("ConfigMap")["data"]
    spec = deployment["spec"]
    assert spec["replicas"] >= 2 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = seconds(config["SOCIALHUB_SERVER_DRAIN_SECONDS"])
    # preStop, the drain, the close window as long again, uvicorn's 15 s for requests.
    assert pod["terminationGracePeriodSeconds"] > pre_stop + 2 * drain + 15
    # A readiness probe sees the drain well within it.
    probe = container["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] < drain
    labels = spec["selector"]["matchLabels"]
    assert pod.get("containers") and spec["template"]["metadata"]["labels"].items() >= labels.items()
    for kind in ("Service", "PodDisruptionBudget"):
        selector = k8s(kind)["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind
    hpa = k8s("HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] >= 2 and hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    job = k8s("Job")["spec"]["template"]["spec"]["containers"][0]
    assert job["args"] == ["migrate"] and job["image"] == container["image"] and job["envFrom"] == container["envFrom"]


def test_the_kubernetes_settings_load() -> None:
    env = {**k8s("ConfigMap")["data"], **k8s("Secret")["stringData"]}
    env["SOCIALHUB_AUTH_JWT_SECRET"] = "x" * 48  # the placeholder is to be replaced
    check_settings(env)


def app_paths() -> set[str]:
    from socialhub.app import create_app

    routes: list[BaseRoute] = create_app(load_settings(env={})).routes
    return {str(getattr(r, "path", "")) for r in routes} - {""}


def test_the_ingress_serves_every_route_but_the_metrics() -> None:
    rules = k8s("Ingress")["spec"]["rules"]
    paths = [(p["path"], p["pathType"]) for rule in rules for p in rule["http"]["paths"]]

    def routed(path: str) -> bool:
        return any(path == p or (kind == "Prefix" and path.startswith(p.rstrip("/") + "/")) for p, kind in paths)

    served = app_paths()
    assert "/metrics" in served and not routed("/metrics")
    missing = sorted(p for p in served - {"/metrics"} if not routed(p))
    assert missing == [], f"add these to deploy/k8s/ingress.yaml: {missing}"
    annotations = k8s("Ingress")["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600


# -- compose ------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, with these variables."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in variables:
            return variables[name]
        assert op == ":-", f"${{{name}}} is required and not in deploy/.env.example"
        return str(arg)

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def test_compose_matches_the_compose_specification() -> None:
    done = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_schema_check_fails_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  web:\n    image: nginx\n    ports: 80\n    restart: sometimes\n")
    done = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)], capture_output=True, text=True
    )
    assert done.returncode != 0


def test_compose_has_the_whole_system_and_its_references_hold() -> None:
    doc = compose()
    services = doc["services"]
    assert {"postgres", "redis", "kafka", "minio", "coturn", "migrate", "socialhub-1", "socialhub-2", "gateway"} <= set(
        services
    )
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
            else:
                assert source in doc["volumes"], (name, source)
        for network in service.get("networks", []):
            assert network in doc["networks"], (name, network)
    for name in ("socialhub-1", "socialhub-2", "migrate"):
        assert (DEPLOY / services[name]["build"]["context"] / services[name]["build"]["dockerfile"]).is_file()
    assert services["migrate"]["command"] == ["migrate"]
    assert services["socialhub-1"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["gateway"]["ports"] == ["80:80"]
    assert "./nginx/socialhub.conf:/etc/nginx/conf.d/default.conf:ro" in services["gateway"]["volumes"]
    # The instances believe X-Forwarded-For from the gateway's fixed address only.
    gateway_ip = services["gateway"]["networks"]["backend"]["ipv4_address"]
    env = services["socialhub-1"]["environment"]
    assert env["SOCIALHUB_SERVER_FORWARDED_ALLOW_IPS"] == gateway_ip
    # Time to drain before Docker's SIGKILL: the drain, the close window, uvicorn's 15 s.
    drain = seconds(env["SOCIALHUB_SERVER_DRAIN_SECONDS"])
    assert seconds(services["socialhub-1"]["stop_grace_period"]) > 2 * drain + 15


def test_the_compose_settings_load() -> None:
    example = dict(
        line.split("=", 1)
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    env = {k: interpolate(str(v), example) for k, v in compose()["services"]["socialhub-1"]["environment"].items()}
    assert env["SOCIALHUB_MEDIA_STORE"] == "s3" and env["SOCIALHUB_REDIS_URL"].startswith("redis://")
    check_settings(env)


# -- monitoring ------------------------------------------------------------------------------------


def exported_metrics() -> set[str]:
    """The names of the series socialhub's /metrics can hold (the process's registry once
    the app is built), by family type."""
    from prometheus_client import REGISTRY

    app_paths()  # builds the app: every metric of socialhub registered
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = {"up"}  # Prometheus's own, per scrape target
    for family in REGISTRY.collect():
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def expressions() -> dict[str, str]:
    rules = yaml.safe_load((DEPLOY / "alerts.yaml").read_text())
    out = {r["alert"]: r["expr"] for group in rules["groups"] for r in group["rules"]}
    dashboard = json.loads((DEPLOY / "grafana" / "socialhub.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            out[f"panel {panel['title']}"] = target["expr"]
    return out


def test_alerts_and_dashboard_use_metrics_socialhub_exports() -> None:
    exported = exported_metrics()
    assert "socialhub_ws_sockets" in exported and "socialhub_http_request_seconds_bucket" in exported
    assert "process_cpu_seconds_total" in exported and "process_resident_memory_bytes" in exported
    functions = {"rate", "sum", "max", "by", "histogram_quantile", "increase", "le"}
    for name, expr in expressions().items():
        used = set(re.findall(r"\b([a-z_]+[a-z])\b(?=\s*[{\[)]|\s*[<>=]|\s*$|\s*/)", re.sub(r'"[^"]*"', "", expr)))
        unknown = used - exported - functions - {"instance", "consumer", "route", "status", "kind", "job"}
        assert not unknown, (name, unknown)
