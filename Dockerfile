# dicomnode on Debian 12 with the CPU build of torch. Build: docker build -t dicomnode .
# Run:   docker run -p 11112:11112 -v dicomnode-data:/var/lib/dicomnode \
#          -e DICOMNODE_PACS=PACS@pacs.example.org:104 dicomnode
FROM debian:12-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/dicomnode --create-home dicomnode
WORKDIR /opt/dicomnode
COPY pyproject.toml README.md alembic.ini ./
COPY scripts/setup.sh scripts/setup.sh
COPY dicomnode dicomnode
COPY alembic alembic
COPY models models
COPY config config
RUN bash scripts/setup.sh
USER dicomnode
ENV DICOMNODE_DATA_DIR=/var/lib/dicomnode DICOMNODE_HOST=0.0.0.0 DICOMNODE_PORT=11112
EXPOSE 11112
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/dicomnode/.venv/bin/dicomnode"]
CMD ["serve"]
