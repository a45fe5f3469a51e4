# CUDA-capable image: PyTorch with CUDA 12.4 and cuDNN 9; textft and its dependencies on top.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    TOKENIZERS_PARALLELISM=false

WORKDIR /app
COPY pyproject.toml README.md ./
COPY textft ./textft
COPY configs ./configs
# torch is already in the base image; pip keeps it because it satisfies torch>=2.4.
RUN pip install --no-cache-dir . && mkdir -p /runs /cache

# `docker run IMAGE --config configs/imdb.yaml output.dir=/runs/imdb` trains on every visible GPU.
ENTRYPOINT ["accelerate", "launch", "-m", "textft.train"]
CMD ["--config", "configs/imdb.yaml", "output.dir=/runs/imdb"]
