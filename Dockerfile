# syntax=docker/dockerfile:1
# The ocireg operator image: `docker build -t ocireg .` (or `buildah build`) from the repository
# root. Checked by hadolint in tests/unit/test_install_dockerfile.py, built with buildah and run
# with podman against the local control plane in tests/e2e/test_image.py.

# The Python base of both stages. The release uses the official slim image; the tests, which
# cannot pull it, pass a local stand-in made from Debian's own python3.11 packages.
ARG BASE=docker.io/library/python:3.11-slim-bookworm

# Build stage: the locked dependencies and ocireg itself, installed into a virtualenv.
FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python3 -m venv /opt/ocireg
COPY pyproject.toml requirements.lock README.md LICENSE ./
COPY operator ./operator
COPY image/prune-venv.sh /usr/local/bin/
# Wheels only for the dependencies: nothing is compiled, and no compiler is needed. Then drop
# the installers and what ocireg never imports (docs/performance.md, "The image").
RUN /opt/ocireg/bin/pip install --only-binary=:all: -c requirements.lock . \
 && /opt/ocireg/bin/pip uninstall --yes pip setuptools wheel \
 && prune-venv.sh /opt/ocireg

# Final stage: the base, the virtualenv, a non-root user, nothing else.
FROM ${BASE}
ARG BASE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ocireg" \
      org.opencontainers.image.description="Kubernetes operator for OCI registry credentials and pull secrets" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE}"
# The official base's own pip and setuptools are build tools too (the Debian stand-in has none).
RUN if python3 -m pip --version >/dev/null 2>&1; then \
      python3 -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel; fi
COPY --from=build /opt/ocireg /opt/ocireg
# The root filesystem is read-only in the cluster: no bytecode written at run time (the
# installed packages were compiled at build time).
ENV PATH=/opt/ocireg/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["ocireg", "run"]
CMD ["--standalone", "--liveness", "http://0.0.0.0:8080/healthz", "--log-format", "json"]
