# cnn-deploy's images, one Dockerfile, three targets (docker-compose.yml builds them):
#   client       `python -m clients` (verify, loadtest, infer): the base install, no PyTorch
#   serving-cpu  the real tritonserver from the nvidia-pytriton wheel + our ONNX Runtime backend,
#                on CPU (the compose `cpu` profile), no PyTorch
#   export       PyTorch (CPU build) -> ONNX -> model repository (the GPU profile's `export`)
#   triton-gpu   the GPU server: NVIDIA's Triton image (TRITON_IMAGE) plus what the image
#                ensembles' preprocessing model imports (deploy/triton-gpu/requirements.txt)
#
# BASE_IMAGE: python:3.13-slim where a registry is reachable; any Debian image with python3 (3.11
# to 3.13), python3-venv, ca-certificates and libpython3.X otherwise (`make compose-test` builds
# them offline with debootstrap: Debian trixie, Python 3.13, for the client; bookworm, Python 3.11,
# for serving-cpu, whose server runs on 3.11 and 3.12 only: docker-compose.yml passes
# CNN_DEPLOY_SERVING_BASE_IMAGE, python:3.11-slim by default, for it). EXTRA_CA_CERT: PEM text of a
# CA that a TLS-intercepting proxy signs with, for pip.
ARG BASE_IMAGE=python:3.13-slim
# docker-compose.yml passes the release it pins for the engines and the server.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM ${BASE_IMAGE} AS base
ARG EXTRA_CA_CERT=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_CERT=/usr/local/share/cnn-deploy/pip-ca.pem
RUN mkdir -p /usr/local/share/cnn-deploy \
    && cat /etc/ssl/certs/ca-certificates.crt > /usr/local/share/cnn-deploy/pip-ca.pem \
    && if [ -n "$EXTRA_CA_CERT" ]; then printf '%s\n' "$EXTRA_CA_CERT" >> /usr/local/share/cnn-deploy/pip-ca.pem; fi \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid 1000 --user-group app

# Our package as a wheel, so the final images hold no source tree or build tooling.
FROM base AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cnn_deploy_core/ cnn_deploy_core/
COPY export/ export/
COPY serving/ serving/
COPY clients/ clients/
COPY cnn_deploy/ cnn_deploy/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM base AS client
COPY constraints.txt /tmp/constraints.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install -c /tmp/constraints.txt /tmp/wheels/*.whl && rm -rf /tmp/wheels /tmp/constraints.txt
# CNN_DEPLOY_HOME anchors the default paths (model_repository, reports) to the work directory.
ENV CNN_DEPLOY_HOME=/work MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /work
USER 1000:1000
CMD ["python", "-m", "clients", "--help"]

FROM base AS serving-cpu
COPY constraints.txt /tmp/constraints.txt
COPY --from=wheel /wheels /tmp/wheels
# The server runs on Python 3.11 and 3.12 (pyproject.toml says why): the last command stops a build
# from another Python's base image with that reason in one line.
RUN pip install -c /tmp/constraints.txt "$(ls /tmp/wheels/*.whl)[serving,cpu]" \
    && rm -rf /tmp/wheels /tmp/constraints.txt \
    && python -c "import sys; from serving.wheel import python_refusal as r; sys.exit(r(sys.version_info[:2]))"
# The server's record and log live in /tmp (a tmpfs in docker-compose.yml): the repository is
# mounted read-only and the root file system can be too.
ENV CNN_DEPLOY_HOME=/work CNN_DEPLOY_STATE_DIR=/tmp/cnn-deploy-serving MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /work
USER 1000:1000
CMD ["python", "-m", "serving", "up", "--repository", "/models"]

FROM base AS export
# CPU builds from PyTorch's own index first: PyPI's Linux wheels are CUDA builds that pull about
# 5 GB of CUDA libraries, and exporting to ONNX needs no GPU. Their own layer, as they change least.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1
# torch==2.14.1 in pyproject.toml and in constraints.txt is satisfied by the installed 2.14.1+cpu
# (a local version matches a plain pin), so pip keeps the CPU build.
COPY constraints.txt /tmp/constraints.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install -c /tmp/constraints.txt "$(ls /tmp/wheels/*.whl)[export,cpu]" \
    && rm -rf /tmp/wheels /tmp/constraints.txt
# docker-compose.yml may run the container as the host user's UID instead (so files in the
# bind-mounted model_repository/ belong to that user), hence the world-writable (sticky)
# directories for the torch hub cache and the export's work directory.
RUN mkdir -p /work/build /cache/torch && chmod 1777 /work/build /cache/torch
ENV TORCH_HOME=/cache/torch \
    MPLCONFIGDIR=/tmp/matplotlib \
    CNN_DEPLOY_HOME=/work
WORKDIR /work
USER 1000:1000
CMD ["python", "-m", "export", "--help"]

# Last, so that building any other target never pulls NVIDIA's image. Without Pillow the
# preprocessing model fails to load, and with --strict-readiness=true the server is never ready.
FROM ${TRITON_IMAGE} AS triton-gpu
COPY deploy/triton-gpu/requirements.txt /tmp/triton-gpu-requirements.txt
RUN pip3 install --no-cache-dir --disable-pip-version-check -r /tmp/triton-gpu-requirements.txt \
    && rm /tmp/triton-gpu-requirements.txt
# triton-server, the non-root user the Triton image creates (docker-compose.yml runs it as 1000:1000)
USER 1000:1000
