# Sluice gateway image (also runs the simulated vLLM fleet: `sluice-sim`).
#   docker build -t sluice .
#   docker run -p 8080:8080 -v ./sluice.yaml:/etc/sluice/sluice.yaml:ro sluice
# Config: the file at $SLUICE_CONFIG (mount your own there); every process setting is an
# SLUICE_* environment variable (see the README).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/sluice
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY predictor predictor
COPY adapters adapters
COPY bench bench
# A regular (not editable) install: the predictor artifact and the data sets are package data.
RUN /opt/sluice/bin/pip install . \
    && /opt/sluice/bin/python -c "from predictor import artifact; artifact.load(artifact.PACKAGED)"

FROM python:3.11-slim
RUN groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid sluice --no-create-home --shell /usr/sbin/nologin sluice
COPY --from=build /opt/sluice /opt/sluice
COPY deploy/sluice.example.yaml /etc/sluice/sluice.yaml
ENV PATH=/opt/sluice/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SLUICE_HOST=0.0.0.0 \
    SLUICE_PORT=8080 \
    SLUICE_CONFIG=/etc/sluice/sluice.yaml
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SLUICE_PORT', '8080') + '/health', timeout=2)"]
ENTRYPOINT ["sluice"]
CMD ["serve"]
