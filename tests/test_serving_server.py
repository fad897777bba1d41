"""The real tritonserver, our Python-based onnxruntime backend, real gRPC and HTTP."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from cnn_deploy_core.golden import GoldenSet
from cnn_deploy_core.metrics import compare
from tests.conftest import CI_ARCHS, CORRUPT_MODEL

pytestmark = pytest.mark.integration
ADMIN = {"admin-key": "test-admin-key"}


@pytest.fixture(scope="module")
def http(triton):
    client = httpclient.InferenceServerClient(f"{triton.host}:{triton.http_port}", concurrency=16)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(triton):
    client = grpcclient.InferenceServerClient(f"{triton.host}:{triton.grpc_port}")
    yield client
    client.close()


def _golden(repository, name) -> GoldenSet:
    return GoldenSet.load(repository / name / "1" / "golden.npz")


def _infer(client, module, name, x, **output_kwargs):
    inp = module.InferInput("input", list(x.shape), "FP32" if x.dtype == np.float32 else "FP64")
    inp.set_data_from_numpy(x)
    out = module.InferRequestedOutput("logits", **output_kwargs)
    return client.infer(name, [inp], outputs=[out])


@pytest.mark.parametrize("name", CI_ARCHS)
def test_models_are_ready(http, name):
    assert http.is_server_live() and http.is_model_ready(name)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("name", CI_ARCHS)
def test_served_answers_match_the_golden_set(request, repository, protocol, name):
    client = request.getfixturevalue(protocol)
    module = grpcclient if protocol == "grpc" else httpclient
    golden = _golden(repository, name)
    got = _infer(client, module, name, golden.inputs).as_numpy("logits")
    result = compare(golden.outputs, got, **golden.tolerances["fp32"])
    assert result.passed, result


def test_classification_extension_returns_labels(http, repository):
    golden = _golden(repository, "resnet18")
    result = _infer(http, httpclient, "resnet18", golden.inputs[:1], class_count=3).as_numpy("logits")
    _score, index, label = result[0][0].decode().split(":", 2)
    assert int(index) == int(np.argmax(golden.outputs[0]))
    labels = (repository / "resnet18" / "labels.txt").read_text().splitlines()
    assert label == labels[int(index)]


def test_dynamic_batching_really_batches_under_concurrent_load(grpc, repository):
    golden = _golden(repository, "resnet18")

    def stats():
        s = grpc.get_inference_statistics("resnet18", as_json=True)["model_stats"][0]
        return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))

    before = stats()
    requests = 48

    def one(i):
        return _infer(grpc, grpcclient, "resnet18", golden.inputs[i % len(golden.inputs)][None]).as_numpy(
            "logits"
        )

    with ThreadPoolExecutor(max_workers=16) as pool:  # the gRPC client is thread-safe
        outputs = list(pool.map(one, range(requests)))
    # The backend reports a batch's statistics after its responses are sent: the last batch's may
    # arrive a moment after its answers.
    deadline = time.monotonic() + 10
    while (after := stats())[0] - before[0] < requests and time.monotonic() < deadline:
        time.sleep(0.1)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == requests
    assert executions < inferences, f"{executions} executions for {inferences} inferences: no batching"
    for i, got in enumerate(outputs):  # batching must not mix up whose answer is whose
        np.testing.assert_allclose(got[0], golden.outputs[i % len(golden.outputs)], atol=1e-3)


def test_corrupt_model_is_unavailable_with_its_reason_and_others_keep_serving(http, repository):
    index = {m["name"]: m for m in http.get_model_repository_index(headers=ADMIN)}
    assert index[CORRUPT_MODEL]["state"] == "UNAVAILABLE"
    assert "cannot load" in index[CORRUPT_MODEL]["reason"]
    assert not http.is_model_ready(CORRUPT_MODEL)
    assert all(index[name]["state"] == "READY" for name in CI_ARCHS)
    assert not http.is_server_ready()  # strict readiness: a probe sees the failed model


def test_admin_apis_need_the_key(http):
    with pytest.raises(InferenceServerException, match="restricted"):
        http.get_model_repository_index()


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((1, 3, 112, 112), np.float32, "unexpected shape"),
        ((1, 3, 224, 224), np.float64, "data-type is 'FP64', but model 'alexnet' expects 'FP32'"),
        ((65, 3, 224, 224), np.float32, "batch-size must be <= 64"),
    ],
    ids=["wrong-shape", "wrong-dtype", "batch-too-large"],
)
def test_bad_request_gets_a_clear_error_and_the_server_keeps_serving(grpc, repository, shape, dtype, message):
    with pytest.raises(InferenceServerException, match=message):
        _infer(grpc, grpcclient, "alexnet", np.zeros(shape, dtype=dtype))
    golden = _golden(repository, "alexnet")
    assert compare(
        golden.outputs[:1],
        _infer(grpc, grpcclient, "alexnet", golden.inputs[:1]).as_numpy("logits"),
        **golden.tolerances["fp32"],
    ).passed


def test_config_records_weights_source_for_clients(grpc):
    config = grpc.get_model_config("resnet18", as_json=True)["config"]
    assert config["parameters"]["cnn_deploy.weights_source"]["string_value"] == "random(seed=0)"
    assert config["parameters"]["cnn_deploy.weights_random"]["string_value"] == "true"


def test_a_failed_version_no_longer_on_disk_is_history_not_a_failure(tmp_path):
    """Triton keeps an UNAVAILABLE entry for a version that failed to load even after the model was
    reloaded without it (strict readiness then stays false): gone from disk, it fails nothing."""
    from serving.triton import failed_models

    (tmp_path / "m" / "1").mkdir(parents=True)
    index = [
        {"name": "m", "version": "1", "state": "READY"},
        {"name": "m", "version": "3", "state": "UNAVAILABLE", "reason": "bad file"},
    ]
    assert failed_models(index, tmp_path) == []
    assert failed_models(index) == [index[1]]  # without the repository: a failure
    (tmp_path / "m" / "3").mkdir()
    assert failed_models(index, tmp_path) == [index[1]]  # still on disk: a failure
    assert failed_models([*index, {"name": "n", "version": "1", "state": "LOADING"}], tmp_path) is None
