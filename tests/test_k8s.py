"""Kubernetes manifests: render every kustomization with the real kubectl, validate each
object against the Kubernetes schemas, and check the references between objects."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
KUSTOMIZATIONS = ["base", "overlays/gpu", "overlays/minio"]
# created by the operator, never committed (k8s/README.md lists them with their keys)
EXTERNAL_SECRETS = {
    "semlayout-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    "semlayout-postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD"},
    "semlayout-api": {"SEMLAYOUT_API_TOKEN", "SEMLAYOUT_ADMIN_TOKEN"},
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "CronJob"}

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


def render(path: str) -> list[dict[str, Any]]:
    r = subprocess.run(
        ["kubectl", "kustomize", str(K8S / path)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def pod_labels(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return doc["spec"]["template"]["metadata"].get("labels", {})


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    return spec.get("initContainers", []) + spec["containers"]


def test_every_builtin_object_validates_strictly(rendered: list[dict]) -> None:
    import kubernetes_validate

    checked = 0
    for doc in rendered:
        if doc["apiVersion"].startswith("trainer.kubeflow.org/"):
            continue  # CRDs: structural checks in test_trainjob_gpu_overlay
        kubernetes_validate.validate(doc, "1.32", strict=True)
        checked += 1
    assert checked >= 15


def test_namespace_and_labels(rendered: list[dict]) -> None:
    for doc in rendered:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == "semlayout"
            assert doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        else:
            assert doc["metadata"].get("namespace") == "semlayout", doc["metadata"]["name"]


def test_images_are_pinned_and_project_images_match_the_version(rendered: list[dict]) -> None:
    from semlayout import __version__

    seen = set()
    for doc in workloads(rendered):
        for c in containers(doc):
            image = c["image"]
            seen.add(image)
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
            if image.startswith("ghcr.io/semlayout/"):
                assert image.split(":")[-1] == __version__, image
    assert f"ghcr.io/semlayout/semlayout:{__version__}" in seen
    assert f"ghcr.io/semlayout/semlayout-serve:{__version__}" in seen


def test_secret_and_configmap_references_resolve(rendered: list[dict]) -> None:
    defined_cms = by_kind(rendered, "ConfigMap")
    readme = (K8S / "README.md").read_text()
    for doc in workloads(rendered):
        spec = pod_spec(doc)
        for c in containers(doc):
            for env in c.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    name, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
                    assert key in EXTERNAL_SECRETS.get(name, set()), (
                        doc["metadata"]["name"],
                        name,
                        key,
                    )
                if "configMapKeyRef" in ref:
                    assert (
                        ref["configMapKeyRef"]["key"]
                        in defined_cms[ref["configMapKeyRef"]["name"]]["data"]
                    )
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    assert src["secretRef"]["name"] in EXTERNAL_SECRETS
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"] in defined_cms
        for vol in spec.get("volumes", []):
            if "configMap" in vol:
                cm = defined_cms[vol["configMap"]["name"]]
                for item in vol["configMap"].get("items", []):
                    assert item["key"] in cm["data"]
            if "secret" in vol:
                assert vol["secret"]["secretName"] in EXTERNAL_SECRETS
    for name, keys in EXTERNAL_SECRETS.items():
        assert name in readme, f"k8s/README.md must tell operators to create secret {name}"
        for key in keys:
            assert key in readme


def test_service_accounts_rbac_and_pvcs_resolve(rendered: list[dict]) -> None:
    sas = by_kind(rendered, "ServiceAccount")
    pvcs = by_kind(rendered, "PersistentVolumeClaim")
    for doc in workloads(rendered):
        spec = pod_spec(doc)
        assert spec.get("serviceAccountName") in sas, doc["metadata"]["name"]
        # least privilege: only the pipeline runner's account mounts an API token
        sa = sas[spec["serviceAccountName"]]
        assert (
            spec.get("automountServiceAccountToken") is False
            or sa.get("automountServiceAccountToken") is False
        )
        claim_templates = {
            t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])
        }
        for vol in spec.get("volumes", []):
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in pvcs
        for c in containers(doc):
            for m in c.get("volumeMounts", []):
                assert m["name"] in {v["name"] for v in spec.get("volumes", [])} | claim_templates
    roles = by_kind(rendered, "Role")
    for rb in by_kind(rendered, "RoleBinding").values():
        assert rb["roleRef"]["kind"] == "Role" and rb["roleRef"]["name"] in roles
        for s in rb["subjects"]:
            assert s["kind"] == "ServiceAccount" and s["name"] in sas
    assert not by_kind(rendered, "ClusterRoleBinding"), "no cluster-wide grants"
    for role in roles.values():
        for rule in role["rules"]:
            assert "secrets" not in rule["resources"] and "*" not in rule["verbs"], rule


def test_services_select_pods_with_the_target_port(rendered: list[dict]) -> None:
    for svc in by_kind(rendered, "Service").values():
        selector = svc["spec"]["selector"]
        matches = [
            w
            for w in workloads(rendered)
            if all(pod_labels(w).get(k) == v for k, v in selector.items())
        ]
        assert matches, f"service {svc['metadata']['name']} selects no pods"
        for port in svc["spec"]["ports"]:
            names = {
                p.get("name") for w in matches for c in containers(w) for p in c.get("ports", [])
            }
            numbers = {
                p["containerPort"]
                for w in matches
                for c in containers(w)
                for p in c.get("ports", [])
            }
            assert port["targetPort"] in names | numbers, (svc["metadata"]["name"], port)


def test_serving_probes_port_and_hpa(rendered: list[dict]) -> None:
    deps = by_kind(rendered, "Deployment")
    serve = deps["semlayout-serve"]
    (c,) = serve["spec"]["template"]["spec"]["containers"]
    assert c["args"][0] == "serve"
    port = int(c["args"][c["args"].index("--port") + 1])
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["http"] == port
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["port"] == "http"
    hpa = by_kind(rendered, "HorizontalPodAutoscaler")["semlayout-serve"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "semlayout-serve",
    }
    assert (
        hpa["spec"]["minReplicas"] >= 2 and c["resources"]["requests"]["cpu"]
    ), "HPA needs CPU requests"
    svc = by_kind(rendered, "Service")["semlayout-serve"]
    assert svc["metadata"]["annotations"]["prometheus.io/port"] == str(port)


def test_serve_command_default_port_matches() -> None:
    """The manifest's port is the one `semlayout serve` takes (its --port option)."""
    import inspect

    from semlayout.commands import cmd_serve as serve_cmd

    default = inspect.signature(serve_cmd.serve).parameters["port"].default.default
    assert default == 8000


def test_serving_replicas_share_the_postgres_store_and_the_s3_feedback(
    rendered: list[dict],
) -> None:
    """No state of a pod's own: >= 2 replicas, the monitoring store a postgresql:// URL without
    credentials (libpq reads PGUSER / PGPASSWORD from the secret), feedback in S3, no volume
    but /tmp; the drift CronJob reads the same store and bucket, and PostgreSQL admits both."""
    from semlayout.continual import LoopConfig
    from semlayout.monitoring.database import parse_db
    from semlayout.serving.settings import ServeSettings

    cm = by_kind(rendered, "ConfigMap")["semlayout-config"]["data"]
    db = parse_db(cm["SEMLAYOUT_MONITOR_DB"])
    assert db.kind == "postgresql" and db.url.password is None and db.url.username is None
    assert db.url.host == "postgres.semlayout.svc.cluster.local"
    assert cm["SEMLAYOUT_FEEDBACK_URI"].startswith("s3://")
    settings = ServeSettings(
        **{
            k.removeprefix("SEMLAYOUT_").lower(): v
            for k, v in cm.items()
            if k in ("SEMLAYOUT_MONITOR_DB", "SEMLAYOUT_FEEDBACK_URI")
        }
    )
    assert settings.feedback_uri == cm["SEMLAYOUT_FEEDBACK_URI"]
    init = by_kind(rendered, "ConfigMap")["postgres-initdb"]["data"]["monitor.sql"]
    assert f"CREATE DATABASE {db.url.database}" in init
    serve = by_kind(rendered, "Deployment")["semlayout-serve"]
    cj = by_kind(rendered, "CronJob")["semlayout-drift-check"]
    assert serve["spec"]["replicas"] >= 2
    assert not by_kind(rendered, "PersistentVolumeClaim"), "no shared volume for the monitors"
    for doc in (serve, cj):
        (c,) = pod_spec(doc)["containers"]
        env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in c.get("env", [])}
        assert env["PGUSER"] == {"name": "semlayout-postgres", "key": "POSTGRES_USER"}
        assert env["PGPASSWORD"] == {"name": "semlayout-postgres", "key": "POSTGRES_PASSWORD"}
        sources = [s.get("secretRef", s.get("configMapRef", {}))["name"] for s in c["envFrom"]]
        assert {"semlayout-config", "semlayout-s3"} <= set(sources)
        assert [m["mountPath"] for m in c["volumeMounts"] if m["name"] != "loop-config"] == ["/tmp"]
    loop = LoopConfig.model_validate(
        yaml.safe_load(by_kind(rendered, "ConfigMap")["semlayout-config"]["data"]["loop.yaml"])
    )
    assert loop.feedback_uri == cm["SEMLAYOUT_FEEDBACK_URI"]
    policy = by_kind(rendered, "NetworkPolicy")["postgres-clients"]
    admitted = {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        for rule in policy["spec"]["ingress"]
        for p in rule["from"]
    }
    assert {"semlayout-serve", "semlayout-drift-check", "mlflow"} <= admitted


def test_drift_cronjob_runs_the_loop_with_a_valid_config(rendered: list[dict]) -> None:
    from semlayout.continual import LoopConfig

    cj = by_kind(rendered, "CronJob")["semlayout-drift-check"]
    assert len(cj["spec"]["schedule"].split()) == 5  # Kubernetes cron: five fields
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    (c,) = pod_spec(cj)["containers"]
    assert c["command"] == ["semlayout"] and c["args"][:2] == ["loop", "run"]
    cfg_path = c["args"][c["args"].index("--config") + 1]
    mount = next(m for m in c["volumeMounts"] if cfg_path.startswith(m["mountPath"]))
    vol = next(v for v in pod_spec(cj)["volumes"] if v["name"] == mount["name"])
    cm = by_kind(rendered, "ConfigMap")[vol["configMap"]["name"]]
    loop_cfg = LoopConfig.model_validate(yaml.safe_load(cm["data"]["loop.yaml"]))
    assert loop_cfg.kfp_host.startswith("http"), "on the cluster the loop submits to KFP"


def test_restricted_pod_security(rendered: list[dict]) -> None:
    for doc in workloads(rendered):
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in containers(doc):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["limits"], "every container has limits"


def test_network_policies_select_existing_pods(rendered: list[dict]) -> None:
    for np_ in by_kind(rendered, "NetworkPolicy").values():
        sel = np_["spec"]["podSelector"]["matchLabels"]
        assert any(
            all(pod_labels(w).get(k) == v for k, v in sel.items()) for w in workloads(rendered)
        )


def test_trainjob_gpu_overlay() -> None:
    docs = render("overlays/gpu")
    runtimes = by_kind(docs, "TrainingRuntime")
    job = by_kind(docs, "TrainJob")["semlayout-train-multinode"]
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    ref = job["spec"]["runtimeRef"]
    assert ref["kind"] == "TrainingRuntime" and ref["name"] in runtimes
    runtime = runtimes[ref["name"]]
    assert "torch" in runtime["spec"]["mlPolicy"]
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"][
        "spec"
    ]
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["serviceAccountName"] in by_kind(docs, "ServiceAccount")
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] >= 2
    assert int(trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"]) >= 1
    script = " ".join(trainer["command"])
    assert re.search(r"torchrun\s+-m semlayout\.cli train", script)
    cfg = next(e["value"] for e in trainer["env"] if e["name"] == "SEMLAYOUT_CONFIG")
    # a config name: `semlayout train --config NAME` resolves it inside the installed package
    assert (REPO / "src" / "semlayout" / "configs" / f"{cfg}.yaml").is_file(), f"{cfg}: not shipped"
    for env in trainer["env"]:
        if "valueFrom" in env:
            ref = env["valueFrom"]["secretKeyRef"]
            assert ref["key"] in EXTERNAL_SECRETS[ref["name"]]


def test_minio_overlay_points_s3_clients_at_minio() -> None:
    docs = render("overlays/minio")
    cm = by_kind(docs, "ConfigMap")["semlayout-config"]["data"]
    svc = by_kind(docs, "Service")["minio"]
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "s3")
    assert cm["AWS_ENDPOINT_URL"] == f"http://minio.semlayout.svc.cluster.local:{port}"
    # the base keys survive the patch
    assert cm["MLFLOW_TRACKING_URI"].startswith("http://mlflow.")
    base = by_kind(render("base"), "ConfigMap")["semlayout-config"]["data"]
    assert "AWS_ENDPOINT_URL" not in base
