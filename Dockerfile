# codomyrmex-orchestration as a network MCP server: streamable HTTP on 0.0.0.0:8765, so a bearer token is
# required (docker run -e CODOMYRMEX_AUTH_TOKEN=...). State lives in the /data volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin codomyrmex \
    && mkdir -p /data \
    && chown codomyrmex:codomyrmex /data

USER 10001
WORKDIR /data
# State in /data/.workflows, workflow files in /data/config/workflows/production, projects in /data/projects.
ENV CODOMYRMEX_DATA_DIR=/data \
    CODOMYRMEX_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8765

HEALTHCHECK --interval=30s --timeout=5s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=3)"]

ENTRYPOINT ["codomyrmex-orchestration"]
CMD ["serve", "--transport", "streamable-http", "--host", "0.0.0.0", "--port", "8765"]
