"""A Triton model (Python backend): encoded images in, the tensor the classifier takes out.

`python -m serving repo` writes it to `<repo>/preprocess_<spec>/1/model.py`, beside a copy of
`cnn_deploy_core/preprocess.py`: the very code the clients preprocess with locally, so the tensors
are bit-identical, and the Python of NVIDIA's Triton image (which has no cnn-deploy installed)
runs it too. The spec (resize, crop, mean, std) and the pixel limit come from the model's config.

Each request is decoded on its own: a bad image (truncated, not an image, too large, too small,
an unsupported format) fails its own request with a one-line reason, and the other requests of the
same dynamic batch are answered as usual.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

# The copy of the core's preprocessing beside this file wins over any installed one.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cnn_deploy_core.preprocess import ImageError, Preprocessing, preprocess_bytes

PARAM_PREFIX = "cnn_deploy."


def _error(message, bad_input=False):
    """A bad image is the caller's mistake: INVALID_ARG (HTTP 400) where this Triton has codes.
    (Looked up per call: the stub defines TritonError only after this module is imported.)"""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if bad_input else None
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.spec = Preprocessing.from_dict(json.loads(params[PARAM_PREFIX + "preprocessing"]))
        self.max_pixels = int(params[PARAM_PREFIX + "max_pixels"])
        (inp,) = config["input"]
        (out,) = config["output"]
        self.input_name, self.output_name = inp["name"], out["name"]

    def _one(self, request):
        items = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
        # Each image is written straight into its row of the response's batch: no per-image
        # tensor to stack (a 600 KB copy per image).
        batch = np.empty((len(items), 3, self.spec.crop, self.spec.crop), dtype=np.float32)
        for i, item in enumerate(items):
            data = item if isinstance(item, bytes) else bytes(item)
            name = "image" if len(items) == 1 else f"image {i}"
            preprocess_bytes(data, self.spec, batch[i], max_pixels=self.max_pixels, name=name)
        return pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, batch)])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except ImageError as e:
                responses.append(pb_utils.InferenceResponse(error=_error(str(e), bad_input=True)))
            except Exception as e:  # a bug must not fail the other requests of the batch either
                message = f"preprocessing failed: {e.__class__.__name__}: {e}"
                responses.append(pb_utils.InferenceResponse(error=_error(message)))
        return responses
