"""deploy/k8s: rendered with the real renderer (kubectl kustomize), validated against the Kubernetes
schemas in strict mode (kubernetes-validate), and checked against the code and docker-compose.yml."""

from __future__ import annotations

import copy
import functools
import re
import shlex
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from cnn_deploy_core import registry
from serving.triton import RESTRICTED
from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32"
DOC = ROOT / "docs" / "deploy-k8s.md"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl here to render kustomize")


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def kind(docs, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == name]
    return doc


def container(docs) -> dict:
    (c,) = kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def compose() -> dict:
    env = {"TRITON_ADMIN_KEY": "k"}
    text = (ROOT / "docker-compose.yml").read_text()
    text = re.sub(r"\$\{(\w+)(?::[-?]([^}]*))?\}", lambda m: env.get(m.group(1), m.group(2) or ""), text)
    return yaml.safe_load(text)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_every_rendered_resource_is_valid_in_strict_mode(overlay):
    docs = render(overlay)
    assert {d["kind"] for d in docs} == {
        "Namespace", "PersistentVolumeClaim", "Job", "Deployment", "Service", "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }  # fmt: skip
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_catches_a_misspelled_field():
    deployment = copy.deepcopy(kind(render("cpu"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_triton_is_probed_secured_and_keyed_like_compose(overlay):
    docs = render(overlay)
    c = container(docs)
    gpu_service = compose()["services"]["triton"]
    compose_ports = sorted(int(p.split(":")[1]) for p in gpu_service["ports"])
    assert sorted(p["containerPort"] for p in c["ports"]) == compose_ports == [8000, 8001, 8002]
    service_ports = {p["name"]: p["port"] for p in kind(docs, "Service")["spec"]["ports"]}
    assert service_ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert (
        c["startupProbe"]["httpGet"]["path"] == c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    )
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    pod = kind(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 1000
    assert (
        c["securityContext"]["readOnlyRootFilesystem"]
        and not c["securityContext"]["allowPrivilegeEscalation"]
    )
    (key,) = [e for e in c["env"] if e["name"] == "TRITON_ADMIN_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {"name": "triton-admin-key", "key": "key"}
    strategy = kind(docs, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy == {"maxUnavailable": 0, "maxSurge": 1}  # zero failed requests through a rollout
    assert kind(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    limits = c["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (overlay == "gpu")


def test_the_gpu_overlay_runs_the_compose_image_with_the_compose_flags():
    c = container(render("gpu"))
    gpu_service = compose()["services"]["triton"]
    assert c["image"] == gpu_service["image"]
    ours = [a for a in c["command"][1:] if "restricted" not in a]
    theirs = [a for a in gpu_service["command"][1:] if "restricted" not in a]
    assert ours == theirs
    restricted = [a for a in c["command"] if "restricted" in a]
    assert len(restricted) == 2 and all(a.split("=", 1)[1].split(":")[0] == RESTRICTED for a in restricted)
    assert all(a.endswith("admin-key=$(TRITON_ADMIN_KEY)") for a in restricted)


def test_the_cpu_overlay_command_parses_with_the_serving_cli():
    from serving import cli

    c = container(render("cpu"))
    assert c["command"][:3] == ["python", "-m", "serving"]
    ns = cli.build_parser().parse_args(c["command"][3:])
    assert ns.command == "up" and ns.config_name == "cpu" and ns.host == "0.0.0.0"
    assert str(ns.repository) == "/models" and c["image"].startswith("cnn-deploy-serving-cpu")
    assert c["image"].split(":")[0] == compose()["services"]["triton-cpu"]["image"].split(":")[0]


def test_the_export_job_runs_the_export_and_serving_commands_on_registered_models():
    from export.cli import build_parser as export_parser
    from serving.cli import build_parser as serving_parser

    job = kind(render("cpu"), "Job")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    script = c["command"][2]
    for name, value in env.items():
        script = script.replace(f"$({name})", value)
    export, place = (shlex.split(part) for part in script.split("&&"))
    ns = export_parser().parse_args(export[3:])
    assert [a.name for a in registry.resolve(ns.architectures)] == env["MODELS"].split()
    placed = serving_parser().parse_args(place[3:])
    assert str(placed.repository) == "/models" and str(placed.models) == str(ns.output)
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/models"] == "model-repository"


def test_the_hpa_scales_on_a_triton_metric_the_docs_derive():
    hpa = kind(render("cpu"), "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    doc = DOC.read_text()
    assert name in doc and "nv_inference_queue_duration_us" in doc and "prometheus-adapter" in doc.lower()


def test_the_kserve_alternative_serves_the_same_repository():
    service = yaml.safe_load((K8S / "kserve" / "inferenceservice.yaml").read_text())
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton"
    pvc = kind(render("cpu"), "PersistentVolumeClaim")["metadata"]["name"]
    assert model["storageUri"] == f"pvc://{pvc}/"
    compose_args = compose()["services"]["triton"]["command"]
    assert set(model["args"]) <= set(compose_args)
    assert model["runtimeVersion"] == compose()["services"]["triton"]["image"].split(":")[1]
