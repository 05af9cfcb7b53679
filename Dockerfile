# syntax=docker/dockerfile:1
# Build stage: resolve the locked dependencies into a virtualenv.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/ocireg
COPY pyproject.toml requirements.lock README.md ./
COPY operator ./operator
RUN /opt/ocireg/bin/pip install --no-cache-dir -c requirements.lock .

# Final stage: the virtualenv only, no compilers, a non-root user.
FROM python:3.11-slim
LABEL org.opencontainers.image.title="ocireg" \
      org.opencontainers.image.description="Kubernetes operator for OCI registry credentials and pull secrets" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/ocireg /opt/ocireg
ENV PATH=/opt/ocireg/bin:$PATH PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["ocireg", "run"]
CMD ["--liveness", "http://0.0.0.0:8080/healthz", "--log-format", "json"]
