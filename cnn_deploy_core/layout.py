"""Names shared by export, serving and clients: tensors, files, config keys, special models."""

INPUT_NAME = "input"  # float32 [batch, 3, 224, 224], normalized as the weights' transforms say
OUTPUT_NAME = "logits"  # float32 [batch, 1000]

# Files of one export (build/models/<name>/) and of one repository version (<repo>/<name>/<v>/)
MODEL_FILE = "model.onnx"
FP16_FILE = "model.fp16.onnx"
INT8_FILE = "model.int8.onnx"
INT8_GOLDEN_FILE = "golden.int8.npz"  # the INT8 graph's own answers on the golden inputs
# The INT8 graph in TensorRT's form (signed, symmetric: export/int8.py's SCHEMES), for the GPU,
# and its own answers on the golden inputs
INT8_S8S8_FILE = "model.int8.s8s8.onnx"
INT8_S8S8_GOLDEN_FILE = "golden.int8.s8s8.npz"
RAW_FILE = "model.raw.onnx"
GOLDEN_FILE = "golden.npz"
LABELS_FILE = "labels.txt"
REPORT_FILE = "export.json"
# Files a repository version is made of; all of them are compared when a re-export is placed.
VERSION_FILES = (
    MODEL_FILE,
    FP16_FILE,
    GOLDEN_FILE,
    REPORT_FILE,
    LABELS_FILE,
    INT8_FILE,
    INT8_GOLDEN_FILE,
    INT8_S8S8_FILE,
    INT8_S8S8_GOLDEN_FILE,
)

PARAM_PREFIX = "cnn_deploy."  # export metadata in ONNX metadata_props and Triton config parameters
TRT_SUFFIX = "_trt"  # <name>_trt: the native TensorRT-plan variant of <name>
INT8_SUFFIX = "_int8"  # <name>_int8: the INT8 (QDQ) variant of <name>
IMAGE_SUFFIX = "_image"  # <name>_image: encoded images in (an ensemble with server-side preprocessing)
IMAGE_INPUT = "image"  # BYTES [batch, 1]: one encoded image per batch item
IDENTITY_MODEL = "identity"  # a no-compute model with a classifier's wire format: measures the client

# How `serving up` tells the ONNX Runtime backend its share of the cores (see serving/threads.py)
ENV_ORT_THREADS = "CNN_DEPLOY_ORT_THREADS"  # intra-op threads of a session whose config names none
ENV_ORT_SPINNING = "CNN_DEPLOY_ORT_SPINNING"  # "0": idle ORT workers sleep instead of spinning
# "adapt" (serving/threads.py, cnn_deploy_core/cores.py): the threads of a session's narrow twin,
# and the folder of the server's gate that says which of the two runs
ENV_ORT_NARROW = "CNN_DEPLOY_ORT_NARROW"
ENV_ORT_GATE = "CNN_DEPLOY_ORT_GATE"
# ENV_ORT_SPINNING's values, in words (unset: ORT's default, on)
SPINNING_MODES = {"0": "off", "1": "on", "run": "within a run only"}
