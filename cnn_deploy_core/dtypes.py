"""The one map between numpy dtypes, KServe v2 datatypes ("FP32") and Triton config types."""

from __future__ import annotations

import numpy as np

# KServe v2 datatype -> numpy dtype. Triton's config type is "TYPE_" + the datatype, except for
# BYTES, which the config calls TYPE_STRING.
_KSERVE = {
    "FP32": np.dtype(np.float32),
    "FP16": np.dtype(np.float16),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BYTES": np.dtype(np.object_),
}
_NUMPY = {dtype: name for name, dtype in _KSERVE.items()}


def kserve_to_numpy(datatype: str) -> np.dtype:
    try:
        return _KSERVE[datatype]
    except KeyError:
        raise ValueError(f"unsupported datatype {datatype!r} (supported: {', '.join(_KSERVE)})") from None


def numpy_to_kserve(dtype) -> str | None:
    """ "FP32" for float32 …; None for a dtype Triton has no datatype for (e.g. float64)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "SUO":
        return "BYTES"
    return _NUMPY.get(dtype)


def config_to_kserve(config_type: str) -> str:
    """ "TYPE_FP32" -> "FP32", "TYPE_STRING" -> "BYTES"."""
    name = config_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def kserve_to_config(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
