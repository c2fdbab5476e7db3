"""The deployment files agree with the README and with each other: docker-compose.yml, the
Dockerfiles and deploy/k8s. Plain file checks, no Docker or cluster needed. The README's
service and stand-in tables are the source of truth for names and ports, so the test fails when
the README and the deployment files drift apart."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"

APP_SERVICES = ("gateway", "ledger", "tier", "metering", "notifier")
INFRA = ("nats", "postgres", "redis")
HEALTHY = "service_healthy"
COMPLETED = "service_completed_successfully"


# --- README ------------------------------------------------------------------------------------


def _table(header: str) -> list[list[str]]:
    """Rows (cells stripped) of the markdown table whose header line starts with `header`."""
    lines = README.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.replace(" ", "").startswith(header.replace(" ", "")):
            rows = []
            for row in lines[i + 1 :]:
                if not row.startswith("|"):
                    break
                cells = [c.strip() for c in row.strip().strip("|").split("|")]
                if set("".join(cells)) <= set("-: "):
                    continue  # the | --- | separator
                rows.append(cells)
            return rows
    raise AssertionError(f"README has no table starting with {header!r}")


def _compose_name(readme_name: str) -> str:
    """'mock upstream' -> 'mock-upstream', 'Dodo emulator' -> 'dodo-emulator'."""
    return "-".join(readme_name.lower().split())


@cache
def readme_ports() -> dict[str, tuple[str, set[int]]]:
    """compose service name -> (kind, ports) from the `| service | port |` and
    `| stand-in | port |` tables."""
    found: dict[str, tuple[str, set[int]]] = {}
    for kind, header in (("service", "| service | port |"), ("stand-in", "| stand-in | port |")):
        for cells in _table(header):
            found[_compose_name(cells[0])] = (kind, {int(p) for p in re.findall(r"\d+", cells[1])})
    return found


@cache
def readme_config() -> list[tuple[list[str], set[str]]]:
    """(variable names, services that use them) from the `| variable | default | used by |` table."""
    rows = []
    for cells in _table("| variable | default | used by |"):
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])
        used_by = cells[2].lower()
        users = (
            set(APP_SERVICES)
            if used_by.startswith("all")
            else {svc for svc in APP_SERVICES if re.search(rf"\b{svc}\b", used_by)}
        )
        rows.append((names, users))
    return rows


def test_readme_tables_are_parsed() -> None:
    ports = readme_ports()
    assert {n for n, (kind, _) in ports.items() if kind == "service"} == set(APP_SERVICES)
    assert len([n for n, (kind, _) in ports.items() if kind == "stand-in"]) >= 4
    assert all(p for _, p in ports.values())
    assert any("NATS_URL" in names for names, _ in readme_config())


# --- compose -----------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, Any]:
    return compose()["services"]  # type: ignore[no-any-return]


def container_ports(svc: dict[str, Any]) -> set[int]:
    ports: set[int] = set()
    for entry in svc.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
            continue
        target = str(entry).split("/")[0].rsplit(":", 1)[-1]
        lo, _, hi = target.partition("-")
        ports.update(range(int(lo), int(hi or lo) + 1))
    return ports


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        return dict(str(item).partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def depends_on(svc: dict[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on", {})
    assert isinstance(deps, dict), "depends_on must use the long form with conditions"
    return {name: spec["condition"] for name, spec in deps.items()}


def test_compose_parses_and_has_infra() -> None:
    svcs = services()
    for name in INFRA:
        assert name in svcs, f"compose has no {name}"
        assert "healthcheck" in svcs[name], f"{name} has no healthcheck"
    assert svcs["nats"]["image"].startswith("nats:2.10")
    assert "-js" in svcs["nats"]["command"]
    assert "-m" in svcs["nats"]["command"] and "8222" in str(svcs["nats"]["healthcheck"]["test"])
    assert svcs["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in str(svcs["postgres"]["healthcheck"]["test"])
    assert svcs["redis"]["image"].startswith("redis:7")
    assert "ping" in str(svcs["redis"]["healthcheck"]["test"])
    assert any("observability" in s.get("profiles", []) for s in svcs.values())
    for name in INFRA:
        for volume in svcs[name].get("volumes", []):
            source = str(volume).split(":")[0]
            assert source in compose()["volumes"], f"{name}: volume {source} is not declared"


@pytest.mark.parametrize("name", sorted(readme_ports()))
def test_compose_maps_every_readme_port(name: str) -> None:
    kind, ports = readme_ports()[name]
    assert name in services(), f"README {kind} {name!r} is missing from docker-compose.yml"
    assert container_ports(services()[name]) == ports, f"{name}: compose ports differ from the README"


def test_every_built_compose_service_is_in_readme() -> None:
    built = {name for name, svc in services().items() if "build" in svc}
    assert built - set(readme_ports()) == {"provision"}


@pytest.mark.parametrize("name", sorted(readme_ports()))
def test_every_readme_service_has_a_healthcheck_on_its_port(name: str) -> None:
    svc = services()[name]
    test = " ".join(map(str, svc["healthcheck"]["test"]))
    kind, ports = readme_ports()[name]
    assert any(f":{p}/" in test for p in ports), f"{name}: healthcheck does not probe its own port"
    paths = ("/readyz", "/healthz") if kind == "service" else ("/healthz",)
    assert any(p in test for p in paths), f"{name}: healthcheck does not use {paths}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_wait_for_healthy_dependencies(name: str) -> None:
    svc = services()[name]
    deps = depends_on(svc)
    assert deps.get("provision") == COMPLETED, f"{name} must wait for provision to complete"
    assert "nats" in deps
    for dep, condition in deps.items():
        if dep == "provision":
            continue
        assert condition == HEALTHY, f"{name} -> {dep}: condition {condition}"
        assert "healthcheck" in services()[dep], f"{name} waits for {dep}, which has no healthcheck"
    assert svc.get("restart") in ("unless-stopped", "always", "on-failure")


def test_provision_runs_streams_migrations_and_dodo_bootstrap() -> None:
    svc = services()["provision"]
    script = " ".join(map(str, [svc.get("entrypoint", ""), svc.get("command", "")]))
    assert "provision streams" in script
    assert "migrate" in script and all(s in script for s in APP_SERVICES)
    assert "dodo bootstrap" in script and "--ledger-url" in script
    assert "--ledger-url http://ledger:8081" in script
    deps = depends_on(svc)
    assert {"nats", "postgres", "dodo-emulator"} <= set(deps)
    assert set(deps.values()) == {HEALTHY}


@pytest.mark.parametrize("name", ["gateway", "metering"])
def test_scalable_services_have_no_fixed_names(name: str) -> None:
    svc = services()[name]
    assert "container_name" not in svc
    assert "replicas" in svc.get("deploy", {})
    for entry in svc.get("ports", []):
        host = str(entry).rsplit(":", 1)[0]
        assert "${" in host, f"{name}: host port must be configurable to run replicas ({entry})"


def test_readme_configuration_reaches_the_services_that_use_it() -> None:
    for names, users in readme_config():
        for var in names:
            for svc in users:
                assert var in environment(services()[svc]), f"README says {svc} uses {var}; compose does not set it"


def test_compose_secrets_have_dev_defaults() -> None:
    text = COMPOSE.read_text()
    for var in ("DODO_PAYMENTS_API_KEY", "DODO_PAYMENTS_WEBHOOK_KEY", "TOLLGATE_ADMIN_TOKEN", "UPSTREAM_API_KEY"):
        assert re.search(rf"\$\{{{var}:-[^}}]+\}}", text), f"{var} should come from ${{{var}:-dev default}}"
    # The emulator signs with the key the ledger verifies with.
    emulator = environment(services()["dodo-emulator"])
    assert emulator["DODO_EMULATOR_WEBHOOK_SECRET"] == environment(services()["ledger"])["DODO_PAYMENTS_WEBHOOK_KEY"]


# --- Dockerfiles -------------------------------------------------------------------------------


@cache
def workspace_members() -> set[str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return set(lock["manifest"]["members"])


def compose_dockerfiles() -> dict[str, Path]:
    found = {}
    for name, svc in services().items():
        build = svc.get("build")
        if build is None:
            continue
        assert isinstance(build, dict) and build.get("context") == ".", f"{name}: build from the repo root"
        found[name] = ROOT / build["dockerfile"]
    return found


def test_every_compose_dockerfile_exists() -> None:
    files = compose_dockerfiles()
    assert set(files) >= set(APP_SERVICES) | {"provision"}
    for name, path in files.items():
        assert path.is_file(), f"{name}: {path.relative_to(ROOT)} does not exist"


def _copy_sources(dockerfile: str) -> list[str]:
    sources = []
    for line in dockerfile.splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            sources += [p for p in parts[1:-1] if not p.startswith("--")]
    return sources


@pytest.mark.parametrize("path", sorted({str(p.relative_to(ROOT)) for p in compose_dockerfiles().values()}))
def test_dockerfile_builds_from_the_uv_workspace(path: str) -> None:
    text = (ROOT / path).read_text()
    assert "python:${PYTHON_VERSION}-slim" in text and "ARG PYTHON_VERSION=3.11" in text
    assert "ghcr.io/astral-sh/uv" in text
    assert "--no-install-workspace" in text
    assert "--mount=type=cache,target=/root/.cache/uv" in text
    for package in re.findall(r"--package\s+([\w.-]+)", text):
        assert package in workspace_members(), f"{path}: {package} is not a workspace member"
    syncs = re.findall(r"uv sync ([^\n\\]*)", text)
    assert len(syncs) >= 2 and all("--frozen" in s for s in syncs)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for source in _copy_sources(text):
        assert (ROOT / source).exists(), f"{path}: COPY source {source} does not exist"


@pytest.mark.parametrize("svc", APP_SERVICES)
def test_service_dockerfile_serves_its_readme_port(svc: str) -> None:
    text = (ROOT / "services" / svc / "Dockerfile").read_text()
    (port,) = readme_ports()[svc][1]
    assert f"--package tollgate-{svc}" in text
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None
    assert yaml.safe_load(cmd.group(1))[:6] == ["python", "-m", f"tollgate_{svc}", "serve", "--host", "0.0.0.0"]
    assert str(port) in cmd.group(1) and re.search(rf"^EXPOSE {port}$", text, re.M)


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = (ROOT / ".dockerignore").read_text().split()
    for needed in (".git", ".venv", ".run", "**/__pycache__"):
        assert needed in patterns
    for kept in ("libs", "services", "standins", "cli", "config", "uv.lock", "pyproject.toml"):
        assert kept not in patterns


# --- Kubernetes --------------------------------------------------------------------------------


@cache
def k8s_documents() -> dict[str, list[dict[str, Any]]]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        docs[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def k8s_objects(kind: str) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d
        for name, docs in k8s_documents().items()
        if name != "kustomization.yaml"
        for d in docs
        if d.get("kind") == kind
    }


def test_every_manifest_parses_and_is_listed_in_the_kustomization() -> None:
    docs = k8s_documents()
    assert "kustomization.yaml" in docs
    for name, items in docs.items():
        assert items, f"{name} is empty"
        for item in items:
            assert item.get("apiVersion") and item.get("kind"), f"{name}: a document without apiVersion/kind"
    resources = set(docs["kustomization.yaml"][0]["resources"])
    assert resources == set(docs) - {"kustomization.yaml"}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def _probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    return next(int(p["containerPort"]) for p in container["ports"] if p["name"] == port)


def test_a_deployment_and_service_per_app_service() -> None:
    assert set(k8s_objects("Deployment")) == set(APP_SERVICES)
    assert set(APP_SERVICES) <= set(k8s_objects("Service"))


@pytest.mark.parametrize("svc", APP_SERVICES)
def test_deployment_probes_ports_and_config(svc: str) -> None:
    deployment = k8s_objects("Deployment")[svc]
    container = _container(deployment)
    (port,) = readme_ports()[svc][1]
    assert [int(p["containerPort"]) for p in container["ports"]] == [port]
    ready, live = container["readinessProbe"], container["livenessProbe"]
    assert ready["httpGet"]["path"] == "/readyz" and live["httpGet"]["path"] == "/healthz"
    assert _probe_port(container, ready) == _probe_port(container, live) == port
    assert container["resources"]["requests"] and container["resources"]["limits"]
    refs = {next(iter(ref)) for ref in container["envFrom"]}
    assert refs == {"configMapRef", "secretRef"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    service = k8s_objects("Service")[svc]
    assert service["spec"]["selector"] == selector
    assert [p["port"] for p in service["spec"]["ports"]] == [port]


def test_config_and_secret_carry_the_shared_variables() -> None:
    (config,) = [c for name, c in k8s_objects("ConfigMap").items() if name == "tollgate-config"]
    secret = k8s_objects("Secret")["tollgate-secrets"]
    keys = set(config["data"]) | set(secret["stringData"])
    for var in (
        "NATS_URL",
        "DATABASE_URL",
        "REDIS_URL",
        "UPSTREAM_BASE_URL",
        "UPSTREAM_API_KEY",
        "DODO_PAYMENTS_API_KEY",
        "DODO_PAYMENTS_WEBHOOK_KEY",
        "TOLLGATE_ADMIN_TOKEN",
    ):
        assert var in keys, f"{var} is in neither the ConfigMap nor the Secret"
    assert config["data"]["TOLLGATE_STREAM_REPLICAS"] == "3"
    for secret_var in (
        "DATABASE_URL",
        "UPSTREAM_API_KEY",
        "DODO_PAYMENTS_API_KEY",
        "DODO_PAYMENTS_WEBHOOK_KEY",
        "TOLLGATE_ADMIN_TOKEN",
    ):
        assert secret_var not in config["data"], f"{secret_var} belongs in the Secret"


def test_autoscaling_and_disruption_budget() -> None:
    hpas = k8s_objects("HorizontalPodAutoscaler")
    for svc in ("gateway", "metering"):
        hpa = next(h for h in hpas.values() if h["spec"]["scaleTargetRef"]["name"] == svc)
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    assert "nats-jetstream" in (K8S / "metering.yaml").read_text(), "metering: mention KEDA's JetStream scaler"
    pdbs = k8s_objects("PodDisruptionBudget")
    assert any(p["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "gateway"} for p in pdbs.values())


def test_provisioning_job_and_nats_cluster() -> None:
    (job,) = k8s_objects("Job").values()
    script = " ".join(map(str, [*_container(job).get("command", []), *_container(job).get("args", [])]))
    assert "provision streams" in script and "migrate" in script
    assert all(s in script for s in APP_SERVICES)
    nats = k8s_objects("StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    assert "jetstream" in k8s_objects("ConfigMap")["nats-config"]["data"]["nats.conf"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert kinds.count("Deployment") == len(APP_SERVICES)
