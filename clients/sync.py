"""The synchronous client: :class:`clients.aio.AsyncTritonClient` run on a private event loop in a
background thread, so both have the same methods, options and behaviour by construction."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from clients import ClientError
from clients.aio import AsyncTritonClient
from clients.model_info import ModelInfo, Prediction

T = TypeVar("T")


class TritonClient:
    """Synchronous client: :class:`AsyncTritonClient`'s methods, run on a private event loop.

    Usable as a context manager; `close()` stops the loop's thread.
    """

    def __init__(self, url: str | Sequence[str], **options):
        self._async = AsyncTritonClient(url, **options)  # validates the URL and options first
        self.endpoint, self.endpoints = self._async.endpoint, self._async.endpoints
        self.where = self._async.where
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="triton-client", daemon=True)
        self._thread.start()

    def _run(self, coroutine: Awaitable[T]) -> T:
        if self._loop.is_closed():
            raise ClientError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def server_ready(self) -> bool:
        return self._run(self._async.server_ready())

    def wait_until_ready(self, model: str | None = None, *, timeout: float = 60.0, poll: float = 0.5) -> None:
        return self._run(self._async.wait_until_ready(model, timeout=timeout, poll=poll))

    def model_info(self, model: str, version: str = "") -> ModelInfo:
        return self._run(self._async.model_info(model, version))

    def infer(
        self, model: str, batch: np.ndarray, *, version: str = "", class_count: int = 0, retry: bool = True
    ) -> np.ndarray:
        return self._run(
            self._async.infer(model, batch, version=version, class_count=class_count, retry=retry)
        )

    def infer_images(
        self, model: str, images: list[bytes | str | Path], *, class_count: int = 0, retry: bool = True
    ) -> np.ndarray:
        return self._run(self._async.infer_images(model, images, class_count=class_count, retry=retry))

    def image_model(self, model: str) -> str | None:
        return self._run(self._async.image_model(model))

    def classify(
        self,
        model: str,
        images: list[str | Path | bytes],
        *,
        top_k: int = 5,
        version: str = "",
        preprocess: str = "auto",
    ) -> list[list[Prediction]]:
        return self._run(
            self._async.classify(model, images, top_k=top_k, version=version, preprocess=preprocess)
        )

    def statistics(self, model: str, version: str = "") -> dict:
        return self._run(self._async.statistics(model, version))

    def model_statistics(self, model: str = "", version: str = "") -> list[dict]:
        return self._run(self._async.model_statistics(model, version))

    def ready_models(self, candidates: list[str]) -> list[str]:
        return self._run(self._async.ready_models(candidates))

    def repository_index(self, admin_key: str | None) -> list[dict]:
        return self._run(self._async.repository_index(admin_key))
