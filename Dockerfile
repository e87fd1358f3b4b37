# dicomnode: CPU image by default; CUDA with a build argument.
#   docker build -t dicomnode .
#   docker build -t dicomnode:cuda --build-arg BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#                --build-arg ONNXRUNTIME=onnxruntime-gpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 .
# Run (all in one; or "receive", "work", "web" for one role, sharing DICOMNODE_DATABASE_URL and the data volume):
#   docker run -p 11112:11112 -v dicomnode-data:/var/lib/dicomnode -v /srv/models:/models:ro \
#     -e DICOMNODE_PACS=PACS@pacs.example.org:104 -e DICOMNODE_PEERS=PACS@pacs.example.org:104 dicomnode
#   GPU: add --gpus all (the CUDA image); the worker checks that onnxruntime really uses the CUDA provider.
ARG BASE=debian:12-slim

FROM ${BASE} AS build
ARG ONNXRUNTIME=onnxruntime
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/dicomnode
COPY pyproject.toml README.md alembic.ini ./
COPY dicomnode dicomnode
COPY alembic alembic
RUN python3 -m venv .venv \
 && .venv/bin/pip install -q --no-cache-dir --disable-pip-version-check torch==2.13.0 --index-url "${TORCH_INDEX}" \
 && .venv/bin/pip install -q --no-cache-dir --disable-pip-version-check -e ".[torch,postgres]" "${ONNXRUNTIME}>=1.17" \
 && .venv/bin/pip install -q --no-cache-dir --disable-pip-version-check --no-deps deepbet==1.0.2 \
 && find .venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/dicomnode --create-home dicomnode \
 && chmod 0700 /var/lib/dicomnode
WORKDIR /opt/dicomnode
COPY --from=build /opt/dicomnode /opt/dicomnode
COPY models /models
COPY config config
USER dicomnode
# Data (spool, results, SQLite, audit anchor) and models live in volumes; the admin API answers the
# health check (/readyz: database reachable, disk guard clear) on loopback inside the container
# (publish it only behind a TLS proxy).
ENV DICOMNODE_DATA_DIR=/var/lib/dicomnode DICOMNODE_MODELS_DIR=/models DICOMNODE_HOST=0.0.0.0 \
    DICOMNODE_PORT=11112 DICOMNODE_ADMIN_HOST=127.0.0.1 DICOMNODE_ADMIN_PORT=8080 PYTHONDONTWRITEBYTECODE=1
VOLUME ["/var/lib/dicomnode", "/models"]
EXPOSE 11112
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["/opt/dicomnode/.venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['DICOMNODE_ADMIN_PORT'] + '/readyz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/dicomnode/.venv/bin/dicomnode"]
CMD ["serve"]
