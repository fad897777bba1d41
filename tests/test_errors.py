"""The one error classifier (clients.errors.classify) on real gRPC and HTTP errors.

Each class comes from a real failure: a closed port (refused), an unresolvable name (DNS), a
listening socket whose accept queue is full (a connect that times out), a socket that accepts and
never answers, tiny gRPC and HTTP servers that answer with Triton's statuses and messages, and the
real tritonserver for an unknown model, a model that failed to load and a wrong shape. The client,
the load generator's transports and the drills all use this one classifier.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from contextlib import asynccontextmanager, contextmanager

import grpc
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from clients import (
    BadInputError,
    InferenceError,
    ModelNotFoundError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerOverloadedError,
    ServerUnavailableError,
)
from clients.aio import AsyncTritonClient
from clients.errors import KeyRequiredError, classify, classify_status, safe_to_resend
from clients.loadtest.transport import GrpcTransport, HttpTransport, Payloads
from cnn_deploy_core.layout import IDENTITY_MODEL, INPUT_NAME, OUTPUT_NAME

QUEUE_FULL = "Exceeds maximum queue size"  # Triton's wording, sent as UNAVAILABLE / 503
QUEUE_TIMEOUT = "Request timeout expired"  # its queue policy's timeout, sent the same way


# --- real sockets that fail in each way -----------------------------------------------------


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@contextmanager
def _silent_socket():
    """Accepts connections (the kernel does) and never says a word."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@contextmanager
def _full_backlog():
    """A listener whose accept queue is full: Linux drops further SYNs, so connecting times out."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    port = s.getsockname()[1]
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    time.sleep(0.2)
    try:
        yield port
    finally:
        for c in fillers:
            c.close()
        s.close()


@asynccontextmanager
async def _grpc_server(behave):
    """A gRPC server answering every method with `behave(context)` (abort with a status, or sleep)."""

    async def handle(request, context):
        return await behave(context)

    class Handler(grpc.GenericRpcHandler):
        def service(self, details):
            return grpc.unary_unary_rpc_method_handler(handle)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@asynccontextmanager
async def _http_server(status: int, message: str):
    """An HTTP server answering every request as Triton answers an error: {"error": message}."""
    from aiohttp import web

    async def handle(request):
        await request.read()
        return web.json_response({"error": message}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


def _payloads(model: str = IDENTITY_MODEL) -> Payloads:
    return Payloads(
        model=model,
        version="",
        input_name=INPUT_NAME,
        datatype="FP32",
        output_name=OUTPUT_NAME,
        output_shape=(1000,),
        batches=[np.zeros((1, 3, 224, 224), np.float32)],
    )


async def _grpc_transport_error(address: str, timeout: float = 1.0, model: str = IDENTITY_MODEL):
    transport = GrpcTransport(address, _payloads(model), slots=1, timeout=timeout)
    await transport.open()
    try:
        with pytest.raises(Exception) as info:
            await transport.send(0, 0)
    finally:
        await transport.close()
    return info.value


async def _http_transport_error(address: str, timeout: float = 1.0, model: str = IDENTITY_MODEL):
    transport = HttpTransport(f"http://{address}", _payloads(model), slots=1, timeout=timeout)
    await transport.open()
    try:
        with pytest.raises(Exception) as info:
            await transport.send(0, 0)
    finally:
        await transport.close()
    return info.value


async def _client_error(url: str, model: str = "m", timeout: float = 1.0, **kw):
    async with AsyncTritonClient(url, timeout=timeout, retries=0, **kw) as client:
        with pytest.raises(Exception) as info:
            await client.model_info(model)
    return info.value


# --- before the request reached a server: safe to fail over -------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_connection_refused_is_unavailable(protocol):
    port = _closed_port()
    error = asyncio.run(_client_error(f"{protocol}://127.0.0.1:{port}"))
    assert isinstance(error, ServerUnavailableError) and safe_to_resend(error)
    send = _grpc_transport_error if protocol == "grpc" else _http_transport_error
    assert isinstance(asyncio.run(send(f"127.0.0.1:{port}")), ServerUnavailableError)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unresolvable_host_is_unavailable(protocol):
    error = asyncio.run(_client_error(f"{protocol}://no-such-host.invalid:8001", timeout=5))
    assert isinstance(error, ServerUnavailableError), error


def test_a_connect_that_times_out_is_unavailable_not_a_request_timeout():
    with _full_backlog() as port:
        grpc_error = asyncio.run(_grpc_transport_error(f"127.0.0.1:{port}"))
        http_error = asyncio.run(_http_transport_error(f"127.0.0.1:{port}", timeout=2.0))
        client_error = asyncio.run(_client_error(f"grpc://127.0.0.1:{port}"))
    assert isinstance(grpc_error, ServerUnavailableError), grpc_error
    assert isinstance(http_error, ServerUnavailableError), http_error  # aiohttp's connect timer
    assert isinstance(client_error, ServerUnavailableError), client_error


def test_unavailable_that_says_timed_out_is_unavailable():
    """The status code decides before the text: checked on "timed out" first, gRPC's connect-phase
    "Connection timed out" (UNAVAILABLE) would become a request timeout and never fail over."""
    details = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.1:8001: "
        "Failed to connect to remote host: Connection timed out"
    )
    raw = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
    wrapped = InferenceServerException(details, status=str(grpc.StatusCode.UNAVAILABLE))  # tritonclient's
    assert isinstance(classify(raw, "a:1", "m"), ServerUnavailableError)
    assert isinstance(classify(wrapped, "a:1", "m"), ServerUnavailableError)


def test_a_socket_that_accepts_and_never_answers():
    """gRPC never finishes its handshake with it: the request never left (unavailable, resendable);
    HTTP sent its request: a timeout after sending, never retried."""
    with _silent_socket() as port:
        grpc_error = asyncio.run(_grpc_transport_error(f"127.0.0.1:{port}"))
        grpc_client = asyncio.run(_client_error(f"grpc://127.0.0.1:{port}"))
        http_error = asyncio.run(_http_transport_error(f"127.0.0.1:{port}"))
        http_client = asyncio.run(_client_error(f"http://127.0.0.1:{port}"))
    assert isinstance(grpc_error, ServerUnavailableError), grpc_error
    assert isinstance(grpc_client, ServerUnavailableError), grpc_client
    assert isinstance(http_error, RequestTimeoutError) and not safe_to_resend(http_error)
    assert isinstance(http_client, RequestTimeoutError), http_client


# --- after the request reached a server ------------------------------------------------------


def test_grpc_deadline_after_sending_is_a_timeout_and_not_retried():
    calls = []

    async def slow(context):
        calls.append(1)
        await asyncio.sleep(5)

    async def main():
        async with _grpc_server(slow) as address:
            transport_error = await _grpc_transport_error(address, timeout=0.5)
            before = len(calls)
            client_error = await _client_error(f"grpc://{address}", timeout=0.5)
            return transport_error, client_error, len(calls) - before

    transport_error, client_error, client_calls = asyncio.run(main())
    assert isinstance(transport_error, RequestTimeoutError), transport_error
    assert isinstance(client_error, RequestTimeoutError), client_error
    assert client_calls == 1  # not retried: it may still be running


def test_with_replicas_a_grpc_timeout_after_sending_is_not_failed_over_but_a_connect_timeout_is():
    """The client's failover rule on real gRPC: a request that reached a server and timed out is
    neither retried nor sent to the other replica (it may still run there); one that never got a
    connection (a socket that never completes gRPC's handshake) goes to the healthy replica."""
    calls = {"slow": 0}

    async def slow(context):
        calls["slow"] += 1
        await asyncio.sleep(5)

    async def live(context):
        return b"\x08\x01"  # ServerLiveResponse(live=True), serialized

    async def main():
        async with _grpc_server(slow) as slow_address, _grpc_server(live) as healthy:
            urls = [f"grpc://{slow_address}", f"grpc://{healthy}"]
            async with AsyncTritonClient(urls, timeout=1.0, retries=2, backoff=0.05) as client:
                started = time.monotonic()
                with pytest.raises(RequestTimeoutError):
                    await client._call(lambda c: c.is_server_live(**client._kw()))
                elapsed = time.monotonic() - started
                assert elapsed < 1.9 and calls["slow"] == 1, (elapsed, calls)
                assert len(client.healthy()) == 2  # slow, not gone: not marked down
            with _silent_socket() as port:
                urls = [f"grpc://127.0.0.1:{port}", f"grpc://{healthy}"]
                async with AsyncTritonClient(urls, timeout=1.0, retries=2, backoff=0.05) as client:
                    assert await client._call(lambda c: c.is_server_live(**client._kw())) is True
                    assert [str(e) for e in client.healthy()] == [f"grpc://{healthy}"]

    asyncio.run(main())


GRPC_STATUSES = [
    (grpc.StatusCode.UNAVAILABLE, QUEUE_FULL, ServerOverloadedError),
    (grpc.StatusCode.UNAVAILABLE, QUEUE_TIMEOUT, ServerOverloadedError),
    (grpc.StatusCode.UNAVAILABLE, "Socket closed", ServerUnavailableError),
    (grpc.StatusCode.INVALID_ARGUMENT, "unexpected shape for input 'input'", BadInputError),
    (grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'nope' is not found", ModelNotFoundError),
    (grpc.StatusCode.INTERNAL, "onnxruntime failed", InferenceError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests", ServerOverloadedError),
    # Triton's restricted APIs refuse a call without the key as UNAVAILABLE: not "unreachable".
    (
        grpc.StatusCode.UNAVAILABLE,
        "This API is restricted, expecting header 'triton-grpc-protocol-admin-key'",
        KeyRequiredError,
    ),
]


@pytest.mark.parametrize(("code", "message", "kind"), GRPC_STATUSES, ids=lambda v: getattr(v, "name", None))
def test_grpc_statuses_over_the_wire(code, message, kind):
    async def abort(context):
        await context.abort(code, message)

    async def main():
        async with _grpc_server(abort) as address:
            return await _grpc_transport_error(address), await _client_error(f"grpc://{address}")

    transport_error, client_error = asyncio.run(main())
    assert isinstance(transport_error, kind), transport_error
    assert isinstance(client_error, kind), client_error


HTTP_STATUSES = [
    (503, QUEUE_FULL, ServerOverloadedError),
    (503, QUEUE_TIMEOUT, ServerOverloadedError),
    (400, "unexpected shape for input 'input' for model 'm'", BadInputError),
    (404, "Request for unknown model: 'nope' is not found", ModelNotFoundError),
    (404, "Request for unknown model: 'm' has no available versions", ModelNotReadyError),
    (404, "Request for unknown model: 'm' version 7 is not found", ModelNotReadyError),
    (500, "failed to parse the request JSON buffer", InferenceError),
    (503, "Server is not ready", ServerUnavailableError),
]


@pytest.mark.parametrize(("status", "message", "kind"), HTTP_STATUSES)
def test_http_statuses_over_the_wire(status, message, kind):
    async def main():
        async with _http_server(status, message) as address:
            return await _http_transport_error(address), await _client_error(f"http://{address}")

    transport_error, client_error = asyncio.run(main())
    assert isinstance(transport_error, kind), transport_error
    assert isinstance(client_error, kind), client_error


def test_anything_else_is_an_inference_error_naming_it():
    import aiohttp

    error = classify(ValueError("boom"), "a:1", "m")
    assert isinstance(error, InferenceError) and "ValueError: boom" in str(error)
    # An answer cut short: the server went away under it; resendable (inference is idempotent).
    assert isinstance(classify(aiohttp.ClientPayloadError("cut"), "a:1", "m"), ServerUnavailableError)
    assert isinstance(classify(BrokenPipeError(), "a:1", "m"), ServerUnavailableError)
    assert isinstance(classify(TimeoutError(), "a:1", "m"), RequestTimeoutError)
    assert isinstance(classify(TimeoutError(), "a:1", "m", connected=False), ServerUnavailableError)


def test_classify_status_takes_grpc_names_and_http_numbers():
    assert isinstance(classify_status("StatusCode.DEADLINE_EXCEEDED", "", "a:1"), RequestTimeoutError)
    connect_phase = classify_status("DEADLINE_EXCEEDED", "", "a:1", connected=False)
    assert isinstance(connect_phase, ServerUnavailableError)
    assert isinstance(classify_status(504, "", "a:1"), RequestTimeoutError)
    assert isinstance(classify_status("404", "", "a:1"), ModelNotFoundError)


# --- the real tritonserver -------------------------------------------------------------------

BROKEN = "broken_identity"
SHEDDING = "shedding_identity"  # identity with a queue policy that times requests out at once


@pytest.fixture(scope="module")
def small_triton(tmp_path_factory):
    """identity, a copy of it whose ONNX file is corrupt (it fails to load), and one whose queue
    policy rejects what waited in its queue longer than 1 µs."""
    from cnn_deploy.drills.harness import QueuePolicy, with_queue_policy
    from serving.repository import place_identity
    from serving.triton import ServerOptions, TritonProcess

    repo = tmp_path_factory.mktemp("errors-repo")
    place_identity(repo)
    for copy in (BROKEN, SHEDDING):
        shutil.copytree(repo / IDENTITY_MODEL, repo / copy)
        for cfg in [repo / copy / "config.pbtxt", *(repo / copy / "configs").glob("*.pbtxt")]:
            cfg.write_text(cfg.read_text().replace(f'name: "{IDENTITY_MODEL}"', f'name: "{copy}"'))
    (repo / BROKEN / "1" / "model.onnx").write_bytes(b"\x08\x07 not an ONNX file")
    with_queue_policy(repo, SHEDDING, QueuePolicy(max_queue_size=0, timeout_s=1e-6))
    opts = ServerOptions.on_free_ports(repo, backend_dir=tmp_path_factory.mktemp("errors-backends"))
    log = tmp_path_factory.mktemp("errors-log") / "triton.log"
    with TritonProcess(opts, log_path=log).start() as server:
        server.wait_ready(180, failed_ok=True)  # BROKEN fails to load, by design
        yield opts


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_real_triton_unknown_model_failed_model_and_bad_shape(small_triton, protocol):
    url = small_triton.grpc_url if protocol == "grpc" else small_triton.http_url
    address = url.split("://")[1]
    send = _grpc_transport_error if protocol == "grpc" else _http_transport_error

    async def main():
        unknown = await _client_error(url, "nope")
        failed = await _client_error(url, BROKEN)
        unknown_sent = await send(address, 5.0, "nope")
        failed_sent = await send(address, 5.0, BROKEN)
        async with AsyncTritonClient(url, timeout=10, retries=0) as client:
            info = await client.model_info(IDENTITY_MODEL)
            batch = np.zeros((1, *info.input_dims), np.float32)
            part = client._module.InferInput(info.input_name, [1, 5], "FP32")
            part.set_data_from_numpy(np.zeros((1, 5), np.float32))
            with pytest.raises(BadInputError) as shape:
                await client._call(lambda c: c.infer(IDENTITY_MODEL, [part]), IDENTITY_MODEL)
            assert (await client.infer(IDENTITY_MODEL, batch)).shape[0] == 1
        return unknown, failed, unknown_sent, failed_sent, shape.value

    unknown, failed, unknown_sent, failed_sent, shape = asyncio.run(main())
    assert isinstance(unknown, ModelNotFoundError) and isinstance(unknown_sent, ModelNotFoundError)
    assert isinstance(failed, ModelNotReadyError), failed
    assert isinstance(failed_sent, ModelNotReadyError), failed_sent
    assert isinstance(shape, BadInputError)


@pytest.mark.integration
def test_a_queue_timeout_is_overload_counted_as_failure_never_failed_over(small_triton, capsys, tmp_path):
    """Load shed by a queue policy's timeout, over two URLs of one server: it must not vanish into
    failovers, as it would if "Request timeout expired" were taken for an unreachable server."""
    import json

    from clients.cli import main as clients_main

    port = small_triton.grpc_port
    urls = f"grpc://127.0.0.1:{port},grpc://localhost:{port}"  # two names, one server
    code = clients_main(
        ["loadtest", "--url", urls, "--model", SHEDDING, "--concurrency", "8", "--warmup-s", "0.3",
         "--window-s", "0.5", "--max-windows", "3", "--max-step-s", "3", "--no-verify",
         "--output", str(tmp_path), "--json"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert set(report["totals"]["errors"]) == {"ServerOverloadedError"}, report["totals"]["errors"]
    assert all(r["failovers"] == 0 for r in report["replicas"]), report["replicas"]
    assert code == 1 and "requests failed" in err and "ServerOverloadedError×" in err


def test_sigterm_unwinds_a_command_so_what_it_started_is_stopped(tmp_path):
    """`kill` (SIGTERM) of a CLI command runs its clean-ups as Ctrl-C does: a throwaway server in a
    `with` block is stopped, not left running (a killed `serving tune` left its scratch server)."""
    import signal
    import subprocess
    import sys
    import textwrap

    done, started = tmp_path / "stopped", tmp_path / "started"
    script = textwrap.dedent(f"""
        import argparse, time
        from cnn_deploy_core.console import dispatch

        def run(args):
            try:
                open({str(started)!r}, "w").close()
                time.sleep(60)
            finally:
                open({str(done)!r}, "w").close()  # what stopping the server would be
            return 0

        raise SystemExit(dispatch({{"run": run}}, argparse.Namespace(command="run")))
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM and done.exists() and "terminated" in err
