# syntax=docker/dockerfile:1
# The ocireg operator image: `docker build -t ocireg .` from the repository root.
# Checked by hadolint in tests/unit/test_install_dockerfile.py (no Docker engine needed).

# Build stage: the locked dependencies and ocireg itself, installed into a virtualenv.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/ocireg
COPY pyproject.toml requirements.lock README.md LICENSE ./
COPY operator ./operator
# Wheels only: nothing is compiled, and no compiler is needed. Then drop the installers, which
# the final image does not need.
RUN /opt/ocireg/bin/pip install --only-binary=:all: -c requirements.lock . \
 && /opt/ocireg/bin/pip uninstall --yes pip setuptools wheel

# Final stage: the slim Python base, the virtualenv, a non-root user, nothing else.
FROM python:3.11-slim-bookworm
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ocireg" \
      org.opencontainers.image.description="Kubernetes operator for OCI registry credentials and pull secrets" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
# The base image's own pip and setuptools are build tools too.
RUN python -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel
COPY --from=build /opt/ocireg /opt/ocireg
# The root filesystem is read-only in the cluster: no bytecode written at run time (the
# installed packages were compiled at build time).
ENV PATH=/opt/ocireg/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["ocireg", "run"]
CMD ["--standalone", "--liveness", "http://0.0.0.0:8080/healthz", "--log-format", "json"]
