# syntax=docker/dockerfile:1
# The project's image: the `export` service (PyTorch -> ONNX -> model repository) and the clients
# (`loadtest`, `verify`) in docker-compose.yml. It runs on CPU; the GPU side of the deployment is
# NVIDIA's Triton image, which builds the TensorRT plans and serves the models.

# Stage 1: our package as a wheel, so the final image holds no source tree or build tooling.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cnn_deploy_core/ cnn_deploy_core/
COPY export/ export/
COPY serving/ serving/
COPY clients/ clients/
COPY cnn_deploy/ cnn_deploy/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# CPU builds from PyTorch's own index first: PyPI's Linux wheels are CUDA builds that pull about
# 5 GB of CUDA libraries, and exporting to ONNX needs no GPU. Their own layer, as they change least.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

# The project with its export extra (the client comes with every install) and the rest of its
# pinned dependency tree. torch==2.14.1 in pyproject.toml and in constraints.txt is satisfied by
# the installed 2.14.1+cpu (a local version matches a plain pin), so pip keeps the CPU build.
COPY constraints.txt /tmp/constraints.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install -c /tmp/constraints.txt "$(ls /tmp/wheels/*.whl)[export,cpu]" \
    && rm -rf /tmp/wheels /tmp/constraints.txt

# A non-root user. docker-compose.yml may run the container as the host user's UID instead (so
# files in the bind-mounted model_repository/ and reports/ belong to that user), hence the
# world-writable (sticky) directories for the torch hub cache and the export's work directory.
RUN useradd --create-home --uid 1000 --user-group app \
    && mkdir -p /work/build /cache/torch \
    && chmod 1777 /work/build /cache/torch
# CNN_DEPLOY_HOME anchors the default paths (build/models, reports) to the work directory.
ENV TORCH_HOME=/cache/torch \
    MPLCONFIGDIR=/tmp/matplotlib \
    CNN_DEPLOY_HOME=/work
WORKDIR /work
USER 1000:1000

CMD ["python", "-m", "export", "--help"]
