# GPU image: the CUDA build of PyTorch from the base image, textft with its service, ONNX and offline
# extras on top, installed by docker/install.sh exactly as tests/test_wheel_install.py installs it.
#
#   docker build -t textft:gpu .
#   docker run --gpus all -v textft-data:/data textft:gpu --config imdb output.dir=/data/runs/imdb
#   docker run --gpus all -p 127.0.0.1:8080:8080 -v textft-data:/data textft:gpu service
#
# The base must hold torch>=2.6 (accelerate's minimum): install.sh keeps the base's torch and stops
# the build if a dependency asks for another one, instead of pulling a second CUDA build.
ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY textft ./textft
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE}
ARG TEXTFT_UID=1000
# TOKENIZERS_PARALLELISM reads as a secret to the linter; it is the tokenizers' fork switch.
# hadolint ignore=DL3064
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    TEXTFT_DATA_DIR=/data \
    TEXTFT_PORT=8080 \
    HF_HOME=/data/huggingface
COPY --from=wheel /wheels /tmp/wheels
COPY docker/install.sh docker/entrypoint.sh docker/healthcheck.py /opt/textft/
RUN sh /opt/textft/install.sh /tmp/wheels/textft-*.whl \
    && rm -rf /tmp/wheels \
    && useradd --no-log-init --create-home --non-unique --uid "${TEXTFT_UID}" --shell /bin/sh textft \
    && mkdir -p /data \
    && chown textft:textft /data
USER ${TEXTFT_UID}
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["python", "/opt/textft/healthcheck.py"]
ENTRYPOINT ["/opt/textft/entrypoint.sh"]
CMD ["train", "--config", "imdb", "output.dir=/data/runs/imdb"]
