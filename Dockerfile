# tickwire ingest image: `tickwire run --profile compose` (and `tickwire db migrate` as a one-shot).
# Built by compose/docker-compose.yml with the repository root as context.
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md streams.yaml ./
COPY schemas/ schemas/
COPY tickwire/ tickwire/
COPY framework/ framework/
COPY plugins/ plugins/
COPY spark/ spark/
COPY devservices/ devservices/
RUN python -m venv /opt/tickwire && /opt/tickwire/bin/pip install ".[kafka,postgres]"

FROM python:3.11.13-slim-bookworm
ENV PATH=/opt/tickwire/bin:$PATH PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --home-dir /app tickwire \
    && mkdir -p /app /var/lib/tickwire && chown tickwire /var/lib/tickwire
COPY --from=build /opt/tickwire /opt/tickwire
WORKDIR /app
COPY schemas/ schemas/
COPY streams.yaml streams.yaml
USER tickwire
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=4 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=3)"
ENTRYPOINT ["tickwire"]
CMD ["run", "--config", "/app/streams.yaml", "--profile", "compose"]
