"""The asyncio client: one implementation for gRPC and HTTP, picked by URL scheme.

Library errors are classified at the boundary by :func:`clients.errors.classify`; a request that
never reached a server (refused, DNS, connect timeout, a replica gone) moves at once to another
replica, then is retried a bounded number of times with backoff; a request that timed out after
it was sent is not (it may still be running: retrying would multiply the load), nor one the server
refused because its queue is full.

Several endpoints (replicas serving the same repository) are taken as a list or as one
comma-separated string: calls go round-robin; an endpoint that turns out unreachable is left out
for `cooldown` seconds (passive health checking) and the call moves at once to the next one.
That retry is safe because inference is idempotent: a model's answer depends on its input alone,
and a request lost with a dying replica changed nothing on the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from clients import (
    BadInputError,
    ClientError,
    ModelNotFoundError,
    ModelNotReadyError,
    ServerUnavailableError,
)
from clients.endpoints import Endpoint, RoundRobin, describe, parse_urls
from clients.errors import classify, safe_to_resend
from clients.keys import admin_headers, restricted_error
from clients.model_info import ModelInfo, Prediction
from clients.tls import NO_TLS, TlsOptions, check_schemes, handshake_error, with_mutual_tls_hint
from cnn_deploy_core.dtypes import numpy_to_kserve
from cnn_deploy_core.layout import IMAGE_SUFFIX
from cnn_deploy_core.preprocess import ImageError, preprocess_files

PREPROCESS_CHOICES = ("auto", "server", "client")
T = TypeVar("T")


def check_batch(info: ModelInfo, batch: np.ndarray) -> np.ndarray:
    """Reject a bad batch locally, with the same clarity as the server would."""
    if not isinstance(batch, np.ndarray):
        raise BadInputError(f"{info.name}: input must be a numpy array, got {type(batch).__name__}")
    if batch.ndim == len(info.input_dims):
        batch = batch[None]  # a single example
    if tuple(batch.shape[1:]) != info.input_dims:
        raise BadInputError(
            f"{info.name}: input {info.input_name!r} expects shape "
            f"[N, {', '.join(map(str, info.input_dims))}], got {list(batch.shape)}"
        )
    if numpy_to_kserve(batch.dtype) != info.input_datatype:
        raise BadInputError(
            f"{info.name}: input {info.input_name!r} expects {info.input_datatype}, got {batch.dtype.name}"
        )
    if len(batch) == 0:
        raise BadInputError(f"{info.name}: empty batch")
    return np.ascontiguousarray(batch)


def chunks(batch: np.ndarray, size: int) -> list[np.ndarray]:
    size = size or len(batch)
    return [batch[i : i + size] for i in range(0, len(batch), size)]


def load_images(info: ModelInfo, images: list[str | Path]) -> np.ndarray:
    if not images:
        raise BadInputError("no image given")
    try:
        return preprocess_files(list(images), info.preprocessing)
    except ImageError as e:
        raise BadInputError(str(e)) from e


def encoded(images: list[bytes | str | Path]) -> np.ndarray:
    """Encoded images (bytes, or files read as they are) as a BYTES batch [N, 1]."""
    if not images:
        raise BadInputError("no image given")
    blobs = []
    for image in images:
        if isinstance(image, (bytes, bytearray)):
            blobs.append(bytes(image))
            continue
        try:
            blobs.append(Path(image).read_bytes())
        except FileNotFoundError:
            raise BadInputError(f"image not found: {image}") from None
        except OSError as e:
            raise BadInputError(f"cannot read {image}: {e.strerror or e}") from None
    batch = np.empty((len(blobs), 1), dtype=np.object_)
    batch[:, 0] = blobs
    return batch


class AsyncTritonClient:
    """asyncio client. `async with AsyncTritonClient(url) as client: await client.infer(...)`"""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        timeout: float = 30.0,
        retries: int = 2,
        backoff: float = 0.25,
        cooldown: float = 5.0,
        headers: dict[str, str] | None = None,
        tls: TlsOptions | None = None,
    ):
        if retries < 0 or timeout <= 0 or cooldown < 0:
            raise ClientError("timeout must be > 0, retries >= 0 and cooldown >= 0")
        self.endpoints = parse_urls(url)
        self.tls = tls or NO_TLS  # used for grpcs:// and https:// endpoints
        check_schemes(self.tls, [e.ssl for e in self.endpoints])
        self.endpoint = self.endpoints[0]  # where messages about "the server" point
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.headers = headers or None
        self._info: dict[str, ModelInfo] = {}
        self._image_models: dict[str, bool] = {}
        if self.endpoint.protocol == "grpc":
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.http.aio as module
        self._module = module
        self._aio_clients: list = [None] * len(self.endpoints)
        self._rotation = RoundRobin(len(self.endpoints), cooldown)

    @property
    def where(self) -> str:
        return describe(self.endpoints)

    def _client(self, i: int):
        # Created on first use, inside the running event loop: the aio clients bind to the loop
        # they are created in (aiohttp refuses to be created outside one).
        if self._aio_clients[i] is None:
            endpoint = self.endpoints[i]
            if endpoint.protocol == "grpc":
                tls = self.tls.grpc_kwargs() if endpoint.ssl else {}
                self._aio_clients[i] = self._module.InferenceServerClient(endpoint.address, **tls)
            else:
                context = self.tls.ssl_context() if endpoint.ssl and self.tls.given else None
                self._aio_clients[i] = self._module.InferenceServerClient(
                    endpoint.address,
                    ssl=endpoint.ssl,
                    ssl_context=context,
                    conn_timeout=self.timeout,
                    conn_limit=1000,
                )
        return self._aio_clients[i]

    async def __aenter__(self) -> AsyncTritonClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        for i, client in enumerate(self._aio_clients):
            if client is not None:
                await client.close()
                self._aio_clients[i] = None

    def _kw(self, *, as_json: bool = False) -> dict:
        """The per-call keywords one protocol takes and the other does not."""
        if self.endpoint.protocol != "grpc":
            return {"headers": self.headers}
        kw: dict[str, Any] = {"headers": self.headers, "client_timeout": self.timeout}
        if as_json:
            kw["as_json"] = True
        return kw

    def healthy(self) -> list[Endpoint]:
        """The endpoints not marked down by a recent failure."""
        return [self.endpoints[i] for i in self._rotation.healthy()]

    def _connected(self, i: int) -> bool | None:
        """Whether endpoint i's gRPC channel is connected (None: unknown, HTTP): a call that timed
        out on a channel still connecting never reached the server, so it may go elsewhere."""
        channel = getattr(self._aio_clients[i], "_channel", None)  # tritonclient's grpc.aio channel
        if channel is None:
            return None
        import grpc

        return channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY

    async def _call(
        self, fn: Callable[[Any], Awaitable[T]], model: str | None = None, *, retry: bool = True
    ) -> T:
        """One server call on the next endpoint, its errors classified; a request that never reached
        a server marks the endpoint down and moves at once to another one (once), then retries
        with backoff.

        Only that is retried: a timeout after sending or an overloaded server is not (the request
        may still be running, and a retry would add load where there is too much already).
        """
        delays = [self.backoff * 2**i for i in range(self.retries)] if retry else []
        failover = retry and len(self.endpoints) > 1
        tried: set[int] = set()
        while True:
            i = self._rotation.pick(tried)
            try:
                result = await asyncio.wait_for(fn(self._client(i)), self.timeout)
                self._rotation.succeeded(i)
                return result
            except Exception as e:
                error = classify(e, self.endpoints[i], model, connected=self._connected(i))
                if key_error := restricted_error(str(error), self.endpoints[i]):
                    raise key_error from e  # the same request without the key fails everywhere
                if self.endpoints[i].ssl:
                    if tls_error := handshake_error(str(error), self.endpoints[i], self.tls):
                        raise tls_error from e  # no retry: the same certificates fail the same way
                    error = with_mutual_tls_hint(error, self.tls)
                if not safe_to_resend(error):
                    raise error from e
                self._rotation.failed(i)
                tried.add(i)
                if failover:  # idempotent: safe to send again, to another replica, right away
                    failover = False
                    continue
                if not delays:
                    raise error from e
                await asyncio.sleep(delays.pop(0))
                tried.clear()

    async def server_ready(self, *, live: bool = False) -> bool:
        """Whether any endpoint is ready (each one is asked; the unreachable are marked down); with
        `live`, whether any answers at all (a strictly ready server is ready only when every model is)."""

        async def ready(i: int) -> bool:
            client = self._client(i)
            ask = client.is_server_live if live else client.is_server_ready
            try:
                ok = await asyncio.wait_for(ask(**self._kw()), self.timeout)
            except Exception:
                self._rotation.failed(i)
                return False
            if ok:
                self._rotation.succeeded(i)
            return bool(ok)

        return any(await asyncio.gather(*(ready(i) for i in range(len(self.endpoints)))))

    async def wait_until_ready(self, model: str | None = None, *, timeout: float = 60.0, poll: float = 0.5):
        deadline = time.monotonic() + timeout
        # With a model named, the server need only answer: another model that failed to load keeps
        # a strictly ready server not ready, and must not hold up a client of this one.
        while not await self.server_ready(live=model is not None):
            if time.monotonic() > deadline:
                raise ServerUnavailableError(f"Triton server at {self.where} not ready after {timeout:.0f}s")
            await asyncio.sleep(poll)
        if model is None:
            return
        while True:
            # Readiness first: Triton answers metadata requests for a model still loading with
            # "unknown model", so a NotReady here means "keep waiting", NotFound means "give up".
            if await self._call(lambda c: c.is_model_ready(model, **self._kw()), model):
                await self.model_info(model)
                return
            try:
                await self.model_info(model)
            except ModelNotReadyError:
                pass
            if time.monotonic() > deadline:
                raise ModelNotReadyError(f"model {model!r} not ready at {self.where} after {timeout:.0f}s")
            await asyncio.sleep(poll)

    async def model_info(self, model: str, version: str = "") -> ModelInfo:
        """Metadata and config of a model (its served versions, preprocessing, labels), cached.

        With `version`, also checks that the server serves that version: every served version
        shares the config's labels and preprocessing (the repository guarantees it).
        """
        if model not in self._info:
            kw = self._kw(as_json=True)
            metadata = await self._call(lambda c: c.get_model_metadata(model, **kw), model)
            config = await self._call(lambda c: c.get_model_config(model, **kw), model)
            self._info[model] = ModelInfo.from_server(metadata, config)
        info = self._info[model]
        if version and version not in info.versions:
            raise ModelNotReadyError(
                f"model {model!r} does not serve version {version} at {self.where} "
                f"(serving {', '.join(info.versions) or 'none'})"
            )
        return info

    async def infer(
        self, model: str, batch: np.ndarray, *, version: str = "", class_count: int = 0, retry: bool = True
    ) -> np.ndarray:
        """Logits (or, with class_count, "score:index:label" bytes) for a batch of any size.

        A model that takes encoded images (`<name>_image`) takes a BYTES batch [N, 1] here, as
        :func:`encoded` builds it; :meth:`infer_images` does that for you.
        """
        info = await self.model_info(model, version)
        if info.input_datatype != "BYTES":
            batch = check_batch(info, batch)
        outputs = []
        for part in chunks(batch, info.max_batch_size):
            inp = self._module.InferInput(info.input_name, list(part.shape), info.input_datatype)
            inp.set_data_from_numpy(part)
            out = self._module.InferRequestedOutput(info.output_name, class_count=class_count)
            result = await self._call(
                lambda c, inp=inp, out=out: c.infer(
                    model, [inp], model_version=version, outputs=[out], **self._kw()
                ),
                model,
                retry=retry,
            )
            outputs.append(result.as_numpy(info.output_name))
        return np.concatenate(outputs)

    async def infer_images(
        self, model: str, images: list[bytes | str | Path], *, class_count: int = 0, retry: bool = True
    ) -> np.ndarray:
        """Encoded images (bytes or files: JPEG, PNG, WebP, BMP) to a model that preprocesses them
        on the server (`<name>_image`); nothing is decoded here."""
        info = await self.model_info(model)
        if info.input_datatype != "BYTES":
            raise BadInputError(
                f"{model} takes {info.input_datatype} tensors, not encoded images: use infer(), "
                f"or the {model}{IMAGE_SUFFIX} model"
            )
        return await self.infer(model, encoded(images), class_count=class_count, retry=retry)

    async def image_model(self, model: str) -> str | None:
        """The name of `model`'s encoded-image ensemble when the server has it ready, else None."""
        name = model if model.endswith(IMAGE_SUFFIX) else model + IMAGE_SUFFIX
        if name not in self._image_models:
            try:
                self._image_models[name] = bool(
                    await self._call(lambda c: c.is_model_ready(name, **self._kw()), name)
                )
            except ClientError:
                self._image_models[name] = False
        return name if self._image_models[name] else None

    async def classify(
        self,
        model: str,
        images: list[str | Path | bytes],
        *,
        top_k: int = 5,
        version: str = "",
        preprocess: str = "auto",
    ) -> list[list[Prediction]]:
        """Images -> top-k labels, through Triton's classification extension.

        `preprocess`: "server" sends the encoded files to `<model>_image`, which preprocesses them
        with the spec its export recorded; "client" preprocesses here (the same code) and sends
        tensors; "auto" (default) uses the server when it has `<model>_image`. A given `version`
        is a version of the tensor model, so it is preprocessed here.
        """
        if preprocess not in PREPROCESS_CHOICES:
            raise ClientError(
                f"preprocess must be one of {', '.join(PREPROCESS_CHOICES)}, got {preprocess!r}"
            )
        target = None
        if preprocess != "client" and not version:
            target = await self.image_model(model)
            if target is None and preprocess == "server":
                raise ModelNotFoundError(
                    f"model {model + IMAGE_SUFFIX!r} (preprocessing on the server) is not served "
                    f"at {self.where}"
                )
        if target is not None:
            info = await self.model_info(target)
            if not info.has_labels:
                raise ClientError(f"model {target!r} has no label file: it cannot classify")
            result = await self.infer_images(target, images, class_count=top_k)
        else:
            info = await self.model_info(model, version)
            if not info.has_labels:
                raise ClientError(f"model {model!r} has no label file: it cannot classify")
            result = await self.infer(model, load_images(info, images), version=version, class_count=top_k)
        return [[Prediction.parse(e) for e in row] for row in result.reshape(len(images), -1)]

    async def statistics(self, model: str, version: str = "") -> dict:
        """Triton's statistics for one model version (the first one listed if none given)."""
        stats = await self._call(
            lambda c: c.get_inference_statistics(model, version, **self._kw(as_json=True)), model
        )
        return stats["model_stats"][0] if stats.get("model_stats") else {}

    async def model_statistics(self, model: str, version: str = "") -> list[dict]:
        """Triton's statistics for every loaded version of a model (or the one given), one per entry."""
        stats = await self._call(
            lambda c: c.get_inference_statistics(model, version, **self._kw(as_json=True)), model
        )
        return list(stats.get("model_stats") or [])

    async def repository_index(self, admin_key: str | None) -> list[dict]:
        """Every model the repository configures, each version with its state and, when not ready,
        Triton's reason: `{"name", "version", "state", "reason"}` (an admin API: it needs the key)."""
        kw = self._kw(as_json=True)
        kw["headers"] = {**(self.headers or {}), **admin_headers(admin_key, self.endpoint.protocol)} or None
        index = await self._call(lambda c: c.get_model_repository_index(**kw))
        return list(index.get("models", []) if isinstance(index, dict) else index)

    async def ready_models(self, candidates: list[str]) -> list[str]:
        """Which of the candidate names the server has ready (no admin key needed)."""
        ready = await asyncio.gather(
            *[self._call(lambda c, m=m: c.is_model_ready(m, **self._kw()), m) for m in candidates]
        )
        return [m for m, ok in zip(candidates, ready, strict=True) if ok]
