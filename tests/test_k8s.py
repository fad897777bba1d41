"""deploy/k8s: rendered with the real renderer (kubectl kustomize), validated against the Kubernetes
schemas in strict mode (kubernetes-validate; KServe's CRD schema, vendored, for the InferenceService),
and checked against the code and docker-compose.yml. Who may reach what (NetworkPolicy, Ingress) is
judged by small pure functions over the rendered objects, each made to say no."""

from __future__ import annotations

import copy
import functools
import gzip
import json
import re
import shlex
import shutil
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cnn_deploy_core import registry
from serving.triton import RESTRICTED
from tests.conftest import ROOT
from tests.test_compose import command_args, load_compose

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32"
DOC = ROOT / "docs" / "deploy-k8s.md"
KSERVE_SCHEMA = ROOT / "tests" / "data" / "kserve-inferenceservice-v1beta1.json.gz"
CLIENT_LABEL = {"cnn-deploy.io/triton-client": "true"}
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}
TLS_ENV = {"TRITON_ADMIN_KEY": "k", "CNN_DEPLOY_TLS_DIR": "/etc/cnn-deploy/tls"}

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl here to render kustomize")


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    """An overlay (cpu, gpu) or another kustomization under deploy/k8s (ingress, kserve), rendered."""
    path = K8S / "overlays" / overlay if overlay in ("cpu", "gpu") else K8S / overlay
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def kind(docs, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == name]
    return doc


def container(docs, name: str = "triton") -> dict:
    (c,) = [
        c for c in kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    return c


def compose(env: dict[str, str] | None = None) -> dict:
    """docker-compose.yml as Compose sees it (tests/test_compose.py's interpolation)."""
    return load_compose({"TRITON_ADMIN_KEY": "k"} if env is None else env)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_every_rendered_resource_is_valid_in_strict_mode(overlay):
    docs = render(overlay)
    assert {d["kind"] for d in docs} == {
        "Namespace", "PersistentVolumeClaim", "Job", "Deployment", "Service", "PodDisruptionBudget",
        "HorizontalPodAutoscaler", "NetworkPolicy",
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
    compose_ports = sorted(int(p.split(":")[-1]) for p in gpu_service["ports"])
    assert compose_ports == [8000, 8001, 8002]
    # HTTP (8000) listens on the pod's loopback only: neither the pod nor the Service offers it.
    assert sorted(p["containerPort"] for p in c["ports"]) == [8001, 8002]
    service_ports = {p["name"]: p["port"] for p in kind(docs, "Service")["spec"]["ports"]}
    assert service_ports == {"grpc": 8001, "metrics": 8002}
    for probe, path in (("startupProbe", "ready"), ("readinessProbe", "ready"), ("livenessProbe", "live")):
        assert probe_url(c[probe]) == f"http://127.0.0.1:8000/v2/health/{path}", probe
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


def probe_url(probe: dict) -> str:
    """The one URL an exec probe asks, over the pod's loopback (HTTP listens nowhere else)."""
    (url,) = [m for a in probe["exec"]["command"] for m in re.findall(r"http://[^'\" ]+", a)]
    return url


def test_the_probe_reader_says_no():
    with pytest.raises(ValueError):
        probe_url({"exec": {"command": ["curl", "http://example.com/a", "http://127.0.0.1:8000/b"]}})
    with pytest.raises(KeyError):
        probe_url({"httpGet": {"path": "/v2/health/ready", "port": 8000}})


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_every_pod_is_ready_only_once_verified_and_readiness_stays_cheap(overlay):
    """The verify container's startup probe runs `clients verify` on every model of the repository
    index; its readiness probe the same check, which after the first pass only asks readiness (and
    verifies again after a restart); Triton's own readiness probe asks /v2/health/ready, no more."""
    from clients import cli

    docs = render(overlay)
    checker, server = container(docs, "verify"), container(docs)
    assert checker["image"].split(":")[0] == compose()["services"]["verify"]["image"].split(":")[0]
    startup = checker["startupProbe"]["exec"]["command"]
    assert startup[:4] == ["python", "-m", "clients", "verify"]
    ns = cli.build_parser().parse_args(startup[3:])
    assert ns.models is None and ns.url == ["http://127.0.0.1:8000"]  # every model; the pod's loopback
    mounted = {m["mountPath"]: m for m in checker["volumeMounts"]}
    assert str(ns.repository) == "/models" and mounted["/models"]["name"] == "model-repository"
    assert str(ns.once_per_start).startswith("/tmp/") and "/tmp" in mounted  # per pod, gone with it
    assert checker["readinessProbe"]["exec"]["command"] == startup
    (key,) = [e for e in checker["env"] if e["name"] == "TRITON_ADMIN_KEY"]  # the repository index
    assert key["valueFrom"]["secretKeyRef"] == {"name": "triton-admin-key", "key": "key"}
    assert checker["startupProbe"]["timeoutSeconds"] >= 300  # a first verification is not a poll
    cheap = " ".join(server["readinessProbe"]["exec"]["command"])
    assert "clients" not in cheap and server["readinessProbe"]["timeoutSeconds"] <= 5


def test_both_overlays_are_strictly_ready_and_keep_plaintext_http_on_loopback(tmp_path):
    """Strict readiness (every model READY) and no plaintext side door beside gRPC's TLS."""
    from serving import cli
    from serving.triton import ServerOptions

    gpu = container(render("gpu"))["command"]
    assert "--strict-readiness=true" in gpu and "--grpc-use-ssl=true" in gpu
    assert "--http-address=127.0.0.1" in gpu and "--metrics-address=0.0.0.0" in gpu
    cpu = container(render("cpu"))["command"]
    assert not any("strict-readiness" in a or "plaintext" in a for a in cpu)  # serving up's own: strict
    ns = cli.build_parser().parse_args(cpu[3:])
    assert ns.host == "0.0.0.0" and str(ns.tls_cert) == "/certs/tls.crt"
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"  # stand-ins for the Secret's files
    cert.write_text("cert")
    key.write_text("key")
    key.chmod(0o600)
    served = ServerOptions(repository=ns.repository, host=ns.host, tls_cert=cert, tls_key=key)
    assert served.http_host == "127.0.0.1"  # what `serving up` gives Triton's --http-address
    assert ServerOptions(repository=ns.repository, host=ns.host).http_host == "0.0.0.0"  # it says no


def test_the_gpu_overlay_runs_the_compose_image_with_the_compose_flags():
    """Compose with gRPC TLS on (CNN_DEPLOY_TLS_DIR): the same flags, certificates at the same paths."""
    c = container(render("gpu"))
    gpu_service = compose(TLS_ENV)["services"]["triton"]
    assert c["image"] == gpu_service["image"]
    ours = [a for a in c["command"][1:] if "restricted" not in a]
    theirs = [a for a in command_args(gpu_service)[1:] if "restricted" not in a]
    assert ours == theirs and "--grpc-use-ssl=true" in ours
    restricted = [a for a in c["command"] if "restricted" in a]
    assert len(restricted) == 2 and all(a.split("=", 1)[1].split(":")[0] == RESTRICTED for a in restricted)
    assert all(a.endswith("admin-key=$(TRITON_ADMIN_KEY)") for a in restricted)


def test_the_cpu_overlay_command_parses_with_the_serving_cli():
    from serving import cli

    c = container(render("cpu"))
    assert c["command"][:3] == ["python", "-m", "serving"]
    ns = cli.build_parser().parse_args(c["command"][3:])
    assert ns.command == "up" and ns.config_name == "cpu" and ns.host == "0.0.0.0"
    compose_ns = cli.build_parser().parse_args(command_args(compose(TLS_ENV)["services"]["triton-cpu"])[3:])
    assert (ns.tls_cert, ns.tls_key) == (compose_ns.tls_cert, compose_ns.tls_key) != (None, None)
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
    compose_args = command_args(compose()["services"]["triton"])
    assert {a for a in model["args"] if "restricted" not in a} <= set(compose_args)
    assert model["runtimeVersion"] == compose()["services"]["engines"]["image"].split(":")[1]  # NVIDIA's tag


# --- KServe, against its own CRD schema (kubernetes-validate has none for it) ---


def strict(schema):
    """An OpenAPI schema where an object with listed properties takes no others (as
    kubernetes-validate's strict mode does): a misspelled field is an error, not ignored."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def kserve_schema() -> dict:
    return json.loads(gzip.decompress(KSERVE_SCHEMA.read_bytes()))


def kserve_errors(doc: dict) -> list[str]:
    vendored = kserve_schema()
    assert (
        doc["apiVersion"] == f"{vendored['group']}/{vendored['version']}" and doc["kind"] == vendored["kind"]
    )
    validator = jsonschema.Draft4Validator(strict(vendored["schema"]))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def kserve_docs() -> tuple[dict, ...]:
    return render("kserve")


def test_the_inferenceservice_is_valid_against_kserves_crd_schema_in_strict_mode():
    docs = kserve_docs()
    assert {d["kind"] for d in docs} == {"InferenceService", "NetworkPolicy"}
    assert kserve_errors(kind(docs, "InferenceService")) == []
    kubernetes_validate.validate(kind(docs, "NetworkPolicy"), KUBERNETES_VERSION, strict=True)


def test_kserve_strict_validation_catches_a_misspelled_field():
    service = copy.deepcopy(kind(kserve_docs(), "InferenceService"))
    service["spec"]["predictor"]["model"]["arg"] = service["spec"]["predictor"]["model"].pop("args")
    assert any("arg" in e for e in kserve_errors(service))


def test_the_kserve_schema_records_where_it_came_from_and_its_license():
    vendored = kserve_schema()
    assert "kserve/kserve v0.20.0" in vendored["$comment"] and "Apache License 2.0" in vendored["$comment"]


def test_kserve_restricts_the_admin_apis_with_the_key_from_the_secret():
    model = kind(kserve_docs(), "InferenceService")["spec"]["predictor"]["model"]
    restricted = [a for a in model["args"] if "restricted" in a]
    assert sorted(a.split("=", 1)[0] for a in restricted) == [
        "--grpc-restricted-protocol",
        "--http-restricted-api",
    ]
    assert all(a.split("=", 1)[1] == f"{RESTRICTED}:admin-key=$(TRITON_ADMIN_KEY)" for a in restricted)
    (key,) = [e for e in model["env"] if e["name"] == "TRITON_ADMIN_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {"name": "triton-admin-key", "key": "key"}


# --- Who may reach the pods: NetworkPolicy, judged by a small evaluator ---


def _selected(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "the evaluator reads matchLabels only"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admitted(policy: dict, pod: dict, namespace_labels: dict, port: int) -> bool:
    """Whether `policy` lets a pod in a namespace with these labels reach `port` of `pod` (a pod
    template: labels and containers), by NetworkPolicy's rules: a selected pod takes only what some
    ingress rule admits; a rule's `from` and `ports` both must match (absent = all)."""
    spec = policy["spec"]
    if not _selected(spec["podSelector"], pod["metadata"].get("labels", {})):
        return True  # not this policy's pod
    assert "Ingress" in spec.get("policyTypes", ["Ingress"])
    names = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    for rule in spec.get("ingress", []):
        peers = rule.get("from")
        peer_ok = not peers or any(
            set(peer) == {"namespaceSelector"} and _selected(peer["namespaceSelector"], namespace_labels)
            for peer in peers
        )
        ports = rule.get("ports")
        port_ok = not ports or any(names.get(p["port"], p["port"]) == port for p in ports)
        if peer_ok and port_ok:
            return True
    return False


def _triton_pod(overlay: str = "cpu") -> tuple[dict, dict]:
    docs = render(overlay)
    return kind(docs, "NetworkPolicy"), kind(docs, "Deployment")["spec"]["template"]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_network_policy_admits_clients_to_inference_and_monitoring_to_metrics_only(overlay):
    policy, pod = _triton_pod(overlay)
    everything = {"http": 8000, "grpc": 8001, "metrics": 8002}
    reach = {
        who: {name for name, port in everything.items() if admitted(policy, pod, labels, port)}
        for who, labels in {
            "client namespace": CLIENT_LABEL,
            "monitoring": MONITORING,
            "this namespace": {"kubernetes.io/metadata.name": "cnn-deploy"},
            "unlabelled": {"kubernetes.io/metadata.name": "default"},
        }.items()
    }
    assert reach == {
        "client namespace": {"grpc"},
        "monitoring": {"metrics"},
        "this namespace": set(),
        "unlabelled": set(),
    }


def test_the_policy_evaluator_says_no_and_yes():
    policy, pod = _triton_pod()
    assert not admitted(policy, pod, {}, 8001)
    open_rule = copy.deepcopy(policy)
    open_rule["spec"]["ingress"][0].pop("from")  # a rule without `from` admits every namespace
    assert admitted(open_rule, pod, {}, 8001)
    other_pod = copy.deepcopy(pod)
    other_pod["metadata"]["labels"] = {"app.kubernetes.io/name": "other"}
    assert admitted(policy, other_pod, {}, 8001)  # the policy does not select it


def test_the_kserve_network_policy_guards_the_runtimes_ports():
    policy = kind(kserve_docs(), "NetworkPolicy")
    runtime_ports = {"--http-port": 8080, "--grpc-port": 9000}  # kserve-tritonserver's own args
    labels = {
        "serving.kserve.io/inferenceservice": kind(kserve_docs(), "InferenceService")["metadata"]["name"]
    }
    pod = {"metadata": {"labels": labels}, "spec": {"containers": [{"ports": []}]}}
    assert all(admitted(policy, pod, CLIENT_LABEL, p) for p in runtime_ports.values())
    assert not admitted(policy, pod, CLIENT_LABEL, 8002) and admitted(policy, pod, MONITORING, 8002)
    assert not any(admitted(policy, pod, {}, p) for p in (8080, 9000, 8002))


# --- gRPC TLS: the certificate comes from a Secret, private to the server's group ---


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_grpc_certificate_is_mounted_from_a_secret_readable_by_the_servers_group_only(overlay):
    from cnn_deploy_core.secrets import exposure

    pod = kind(render(overlay), "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "grpc-tls"]
    assert volume["secret"]["secretName"] == "triton-grpc-tls"
    assert exposure(volume["secret"]["defaultMode"]) is None and pod["securityContext"]["fsGroup"] == 1000
    (mount,) = [m for m in container(render(overlay))["volumeMounts"] if m["name"] == "grpc-tls"]
    assert mount["readOnly"] and mount["mountPath"] == "/certs"
    assert any(a.endswith("/certs/tls.key") for a in container(render(overlay))["command"])


# --- The Ingress example: TLS at the ingress, admin APIs not routed ---


def routed(ingress: dict, host: str, path: str) -> dict | None:
    """The backend an Ingress sends `host` + `path` to, by its Exact/Prefix rules (longest match), or
    None. Prefix matches whole path elements: /v2/models matches /v2/models/x, not /v2/modelsx."""
    best, length = None, -1
    for rule in ingress["spec"]["rules"]:
        if rule.get("host") not in (None, host):
            continue
        for p in rule["http"]["paths"]:
            prefix = p["path"].rstrip("/")
            if p["pathType"] == "Exact":
                hit = path == p["path"]
            else:
                hit = path == prefix or path.startswith(prefix + "/") or p["path"] == "/"
            if hit and len(p["path"]) > length:
                best, length = p["backend"], len(p["path"])
    return best


def _ingress(name: str) -> dict:
    return next(d for d in render("ingress") if d["metadata"]["name"] == name)


def test_the_ingress_example_is_valid_in_strict_mode_and_terminates_tls_for_every_host():
    docs = render("ingress")
    assert {d["kind"] for d in docs} == {"Ingress"} and len(docs) == 1
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        hosts = {r["host"] for r in doc["spec"]["rules"]}
        assert hosts <= {h for tls in doc["spec"]["tls"] for h in tls["hosts"]}
        assert doc["metadata"]["namespace"] == kind(render("cpu"), "Service")["metadata"]["namespace"]


def test_the_ingress_routes_to_the_services_named_ports():
    service = kind(render("cpu"), "Service")
    ports = {p["name"] for p in service["spec"]["ports"]}
    for doc in render("ingress"):
        for rule in doc["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                backend = p["backend"]["service"]
                assert backend["name"] == service["metadata"]["name"] and backend["port"]["name"] in ports


def test_no_ingress_routes_to_plaintext_http():
    """With gRPC over TLS, Triton's HTTP has no port on the Service: nothing may send clients there."""
    for doc in render("ingress"):
        backends = [p["backend"]["service"]["port"] for r in doc["spec"]["rules"] for p in r["http"]["paths"]]
        assert backends and all(b == {"name": "grpc"} for b in backends), doc["metadata"]["name"]
        assert doc["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"


def test_the_grpc_ingress_routes_only_public_methods_of_tritons_service_over_tls():
    from tritonclient.grpc import service_pb2

    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ingress = _ingress("triton-grpc")
    host = ingress["spec"]["rules"][0]["host"]
    public = {"ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelConfig",
              "ModelStatistics", "ModelInfer", "ModelStreamInfer"}  # fmt: skip
    reach = {m.name for m in service.methods if routed(ingress, host, f"/{service.full_name}/{m.name}")}
    assert reach == public
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"


def test_the_route_evaluator_says_no():
    ingress = copy.deepcopy(_ingress("triton-grpc"))
    host = ingress["spec"]["rules"][0]["host"]
    assert routed(ingress, "elsewhere.example.com", "/inference.GRPCInferenceService/ModelInfer") is None
    ingress["spec"]["rules"][0]["http"]["paths"][0].update(path="/", pathType="Prefix")
    assert routed(ingress, host, "/inference.GRPCInferenceService/RepositoryModelLoad") is not None


def test_the_k8s_guide_shows_the_secrets_labels_and_the_ingress():
    doc = DOC.read_text()
    needed = (
        "triton-grpc-tls",
        "triton-ingress-tls",
        "cnn-deploy.io/triton-client=true",
        "deploy/k8s/ingress",
    )
    for text in (*needed, "security.md"):
        assert text in doc, text
