# GPU image: CUDA PyTorch base + windtunnel with the DeepSpeed extra.
#   docker build -t windtunnel .
#   docker run --gpus all -v $PWD/runs:/app/runs windtunnel train recipes/gpu-125m.yaml
FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-devel
ENV PIP_NO_CACHE_DIR=1 DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY recipes ./recipes
COPY scripts ./scripts
RUN pip install ".[deepspeed]"
ENTRYPOINT ["windtunnel"]
CMD ["--help"]
