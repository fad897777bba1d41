"""Names shared by export, serving and clients (torch-free): tensors, files, config keys."""

from pathlib import Path

INPUT_NAME = "input"  # float32 [batch, 3, 224, 224], normalized as the weights' transforms say
OUTPUT_NAME = "logits"  # float32 [batch, 1000]

# Files of one export (build/models/<name>/) and of one repository version (<repo>/<name>/<v>/)
MODEL_FILE = "model.onnx"
FP16_FILE = "model.fp16.onnx"
RAW_FILE = "model.raw.onnx"
GOLDEN_FILE = "golden.npz"
LABELS_FILE = "labels.txt"
REPORT_FILE = "export.json"

PARAM_PREFIX = "cnn_deploy."  # export metadata in ONNX metadata_props and Triton config parameters
TRT_SUFFIX = "_trt"  # <name>_trt: the native TensorRT-plan variant of <name>
DEFAULT_REPOSITORY = Path("model_repository")  # the Triton model repository, relative to the cwd
