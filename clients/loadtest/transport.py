"""How the load generator puts requests on the wire, as cheaply as Python allows.

Every distinct request is built and serialized once, before the measurement: a request then costs
one gRPC call (or one HTTP POST) of bytes that already exist, with no per-request protobuf, numpy
or JSON work. Answers come back as raw bytes and are decoded by the verifier, off the timing path.

- `GrpcTransport`: grpc.aio on Triton's KServe v2 service, with serializers switched off (the
  request is already bytes; the response is kept as bytes).
- `GrpcTransport(shared_memory=...)`: inputs written once into a system shared-memory region and
  outputs read from one region per request slot: only a few hundred bytes cross the socket (what
  perf_analyzer's `--shared-memory system` does; local servers only; registering a region is an
  admin API, so it needs the admin key).
- `HttpTransport`: aiohttp posting prebuilt bodies of the KServe binary-data extension.
- `ReplicaSet` (replicas.py): one of those per replica, round-robin, with the client's failover rule: an
  unreachable replica is left out for a cooldown and its request goes once to another one
  (inference is idempotent); timeouts and other errors are counted, never retried.

Written against the raw protocol because tritonclient builds, copies and serializes every
request anew (InferInput.set_data_from_numpy, protobuf assembly), which is most of a fast
model's client cost (`make bench-loadgen`).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from clients import ClientError
from clients.errors import classify, classify_status
from clients.tls import NO_TLS, TlsOptions

# What `send` returns, for the verifier to decode: (kind, data).
GRPC_RESPONSE = "grpc-response"  # a serialized ModelInferResponse
RAW = "raw"  # the output tensor's bytes
ADMIN_HEADER_GRPC = "triton-grpc-protocol-admin-key"
ADMIN_HEADER_HTTP = "admin-key"
CONNECT_S = 10.0  # a TCP connect that takes longer finds no server


@dataclass(frozen=True)
class Payloads:
    """The distinct requests of a workload, as tensors: batch i is `batches[i]`."""

    model: str
    version: str
    input_name: str
    datatype: str  # KServe datatype of the input: FP32, BYTES, ...
    output_name: str
    output_shape: tuple[int, ...]  # per batch item
    batches: list[np.ndarray]

    def raw(self, i: int) -> bytes:
        """The input's bytes as the protocol carries them (BYTES: 4-byte lengths + data)."""
        batch = self.batches[i]
        if self.datatype == "BYTES":
            return b"".join(struct.pack("<I", len(x)) + x for x in batch.reshape(-1))
        return np.ascontiguousarray(batch).tobytes()

    def output_bytes(self, i: int) -> int:
        return len(self.batches[i]) * int(np.prod(self.output_shape)) * 4  # FP32 logits


def translate_grpc(error: BaseException, target: str, model: str, *, connected: bool | None = None):
    """grpc.aio errors -> our typed errors: :func:`clients.errors.classify` (kept under its older name)."""
    return classify(error, target, model, connected=connected)


class GrpcTransport:
    """Prebuilt KServe v2 requests over grpc.aio; optionally through system shared memory."""

    def __init__(
        self,
        address: str,
        payloads: Payloads,
        *,
        slots: int,
        timeout: float,
        shared_memory: bool = False,
        admin_key: str | None = None,
        ssl: bool = False,
        tls: TlsOptions | None = None,
        headers: dict[str, str] | None = None,
    ):
        self.address, self.payloads, self.slots, self.timeout = address, payloads, slots, timeout
        self.shared_memory, self.admin_key, self.ssl = shared_memory, admin_key, ssl
        self.tls = tls or NO_TLS
        # Sent with every request (keyed inference); None keeps the plain call as cheap as before.
        self._headers = tuple((headers or {}).items()) or None
        self.description = "grpc.aio, prebuilt requests" + (", system shared memory" if shared_memory else "")
        self._requests: list[bytes] | list[list[bytes]] = []
        self._regions: list[shared_memory.SharedMemory] = []
        self._registered: list[str] = []
        self._channel = None

    def _metadata(self):
        return ((ADMIN_HEADER_GRPC, self.admin_key),) if self.admin_key else ()

    async def open(self) -> None:
        import grpc
        from tritonclient.grpc import service_pb2

        options = [
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            # A restarted server is found again within ~1 s: gRPC's default reconnect backoff
            # (1 s growing to 120 s) would keep failing requests long after it is back.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self._channel = (
            grpc.aio.secure_channel(self.address, self.tls.grpc_credentials(), options=options)
            if self.ssl
            else grpc.aio.insecure_channel(self.address, options=options)
        )
        # Serializers off: requests are bytes already, responses stay bytes for the verifier.
        self._infer = self._channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        p = self.payloads
        if not self.shared_memory:
            self._requests = [
                self._request(service_pb2, i).SerializeToString() for i in range(len(p.batches))
            ]
            return
        await self._open_shared_memory(service_pb2)

    def _request(self, pb, i: int, input_region: tuple | None = None, output_region: tuple | None = None):
        p = self.payloads
        batch = p.batches[i]
        request = pb.ModelInferRequest(model_name=p.model, model_version=p.version)
        tensor = request.inputs.add(name=p.input_name, datatype=p.datatype, shape=list(batch.shape))
        out = request.outputs.add(name=p.output_name)
        if input_region is None:
            request.raw_input_contents.append(p.raw(i))
        else:
            for param, (name, offset, size) in ((tensor, input_region), (out, output_region)):
                param.parameters["shared_memory_region"].string_param = name
                param.parameters["shared_memory_offset"].int64_param = offset
                param.parameters["shared_memory_byte_size"].int64_param = size
        return request

    async def _admin(self, method: str, request, pb_response) -> None:
        call = self._channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb_response.FromString,
        )
        try:
            await call(request, timeout=30, metadata=self._metadata())
        except Exception as e:
            error = classify(e, self.address, self.payloads.model)
            hint = "" if self.admin_key else " (shared memory is an admin API: give --admin-key-file)"
            raise ClientError(f"cannot {method} at {self.address}: {error}{hint}") from e

    async def _open_shared_memory(self, pb) -> None:
        p = self.payloads
        tag = f"cnn_deploy_lt_{os.getpid()}_{id(self) & 0xFFFF}"
        raws = [p.raw(i) for i in range(len(p.batches))]
        offsets = np.cumsum([0, *map(len, raws)]).tolist()
        out_size = max(p.output_bytes(i) for i in range(len(p.batches)))
        inputs = shared_memory.SharedMemory(name=f"{tag}_in", create=True, size=max(1, offsets[-1]))
        outputs = shared_memory.SharedMemory(name=f"{tag}_out", create=True, size=out_size * self.slots)
        self._regions = [inputs, outputs]
        for raw, offset in zip(raws, offsets, strict=False):
            inputs.buf[offset : offset + len(raw)] = raw
        self._out, self._out_size = outputs, out_size
        for region in self._regions:
            name = region.name
            await self._admin(
                "SystemSharedMemoryRegister",
                pb.SystemSharedMemoryRegisterRequest(
                    name=name, key=f"/{name}", offset=0, byte_size=region.size
                ),
                pb.SystemSharedMemoryRegisterResponse,
            )
            self._registered.append(name)
        self._requests = [
            [
                self._request(
                    pb,
                    i,
                    (inputs.name, offsets[i], len(raws[i])),
                    (outputs.name, slot * out_size, p.output_bytes(i)),
                ).SerializeToString()
                for slot in range(self.slots)
            ]
            for i in range(len(p.batches))
        ]

    async def send(self, item: int, slot: int) -> tuple[str, bytes]:
        """One request (batch `item`, in-flight slot `slot`); the answer as (kind, bytes)."""
        i = item % len(self._requests)
        try:
            if not self.shared_memory:
                return GRPC_RESPONSE, await self._infer(
                    self._requests[i], timeout=self.timeout, metadata=self._headers
                )
            await self._infer(self._requests[i][slot], timeout=self.timeout, metadata=self._headers)
        except Exception as e:
            raise classify(e, self.address, self.payloads.model, connected=self._connected()) from e
        start = slot * self._out_size
        return RAW, bytes(self._out.buf[start : start + self.payloads.output_bytes(i)])

    def _connected(self) -> bool:
        """Whether the channel is up: a deadline that passed while it was still connecting means the
        request never left (safe to send elsewhere), not a request that took too long."""
        import grpc

        return self._channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY

    async def close(self) -> None:
        if self._channel is not None and self._registered:
            from tritonclient.grpc import service_pb2 as pb

            for name in self._registered:
                try:
                    await self._admin(
                        "SystemSharedMemoryUnregister",
                        pb.SystemSharedMemoryUnregisterRequest(name=name),
                        pb.SystemSharedMemoryUnregisterResponse,
                    )
                except ClientError:
                    pass  # the server may be gone; the regions are unlinked below either way
        self._registered = []
        for region in self._regions:
            region.close()
            region.unlink()
        self._regions = []
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


class HttpTransport:
    """Prebuilt KServe v2 binary-data requests over one aiohttp session."""

    description = "aiohttp, prebuilt binary-data requests"

    def __init__(
        self,
        base_url: str,
        payloads: Payloads,
        *,
        slots: int,
        timeout: float,
        ssl_context=None,
        headers: dict[str, str] | None = None,
    ):
        self.base_url, self.payloads, self.timeout = base_url.rstrip("/"), payloads, timeout
        self.slots = slots
        self._ssl_context, self._extra_headers = ssl_context, headers or {}
        self._session = None
        self._bodies: list[tuple[bytes, dict]] = []

    async def open(self) -> None:
        import aiohttp

        p = self.payloads
        for i, batch in enumerate(p.batches):
            raw = p.raw(i)
            header = {
                "inputs": [
                    {
                        "name": p.input_name,
                        "shape": list(batch.shape),
                        "datatype": p.datatype,
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "outputs": [{"name": p.output_name, "parameters": {"binary_data": True}}],
            }
            head = json.dumps(header).encode()
            headers = {
                "Inference-Header-Content-Length": str(len(head)),
                "Content-Type": "application/octet-stream",
                **self._extra_headers,
            }
            self._bodies.append((head + raw, headers))
        version = f"/versions/{p.version}" if p.version else ""
        self._url = f"{self.base_url}/v2/models/{p.model}{version}/infer"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=max(self.slots, 1), **({"ssl": self._ssl_context} if self._ssl_context else {})
            ),
            # The connect phase has its own, shorter timer: its timeout then says "never reached the
            # server" (ConnectionTimeoutError), apart from a request that was sent and timed out.
            timeout=aiohttp.ClientTimeout(
                total=self.timeout, sock_connect=min(CONNECT_S, 0.9 * self.timeout)
            ),
        )

    async def send(self, item: int, slot: int) -> tuple[str, bytes]:
        body, headers = self._bodies[item % len(self._bodies)]
        target = self.base_url
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                data = await response.read()
                if response.status != 200:
                    raise classify_status(response.status, _message(data), target, self.payloads.model)
                size = int(response.headers.get("Inference-Header-Content-Length", len(data)))
        except Exception as e:
            raise classify(e, target, self.payloads.model) from e
        return RAW, data[size:]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _message(data: bytes) -> str:
    """Triton's error body ({"error": "..."}), or its first bytes."""
    try:
        return str(json.loads(data).get("error", ""))
    except (ValueError, AttributeError):
        return data[:200].decode(errors="replace")


def decode_output(kind: str, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """An answer's logits, from what a transport returned."""
    if kind == GRPC_RESPONSE:
        from tritonclient.grpc import service_pb2

        response = service_pb2.ModelInferResponse.FromString(data)
        data = response.raw_output_contents[0] if response.raw_output_contents else b""
    values = np.frombuffer(data, dtype=np.float32)
    per_item = int(np.prod(shape))
    if values.size == 0 or values.size % per_item:
        return values.reshape(1, -1)  # the wrong size: the comparison reports it as wrong
    return values.reshape(-1, *shape)
