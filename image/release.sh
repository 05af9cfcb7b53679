#!/usr/bin/env bash
# Builds and publishes a release to an OCI registry: the operator's image (buildah) and the
# Helm chart (helm push). .github/workflows/release.yml runs it on a version tag against
# ghcr.io; tests/e2e/test_image.py runs the same commands against a local registry.
#
#   release.sh build-image   build the Dockerfile as $IMAGE:$VERSION
#   release.sh push-image    push $IMAGE:$VERSION; prints the pushed digest
#   release.sh push-chart    package helm/ocireg at $VERSION, installing $IMAGE:$VERSION, and
#                            push it to oci://$CHARTS
#
# Environment: VERSION (x.y.z: the tag without its v, which must be ocireg's own version),
# IMAGE (registry/owner/ocireg), CHARTS (registry/owner/charts), REVISION (the commit),
# REGISTRY_USER and REGISTRY_PASSWORD (push-*). Optional: BASE (another base image for both
# stages), BUILD_FLAGS (more `buildah build` flags), REGISTRY_CA_DIR (a directory holding the
# registry's CA as ca.crt, for a private registry).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
: "${VERSION:?VERSION (x.y.z) is required}"
: "${IMAGE:?IMAGE is required}"

own=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$root/operator/ocireg/__init__.py")
if [ "$VERSION" != "$own" ]; then
  echo "release.sh: VERSION $VERSION is not ocireg's version $own (operator/ocireg/__init__.py)" >&2
  exit 1
fi

registry_of() { printf '%s' "${1%%/*}"; }
# Repository names are lower case (a GitHub owner may not be).
IMAGE=${IMAGE,,}
CHARTS=${CHARTS:-}
CHARTS=${CHARTS,,}

case "${1:-}" in
  build-image)
    args=(--build-arg "VERSION=$VERSION" --build-arg "REVISION=${REVISION:-unknown}")
    [ -z "${BASE:-}" ] || args+=(--build-arg "BASE=$BASE")
    # shellcheck disable=SC2086 # BUILD_FLAGS is a list of flags
    buildah build --isolation=chroot "${args[@]}" ${BUILD_FLAGS:-} --tag "$IMAGE:$VERSION" "$root"
    ;;
  push-image)
    tls=()
    [ -z "${REGISTRY_CA_DIR:-}" ] || tls=(--cert-dir "$REGISTRY_CA_DIR")
    printf '%s' "${REGISTRY_PASSWORD:?}" |
      buildah login "${tls[@]}" --username "${REGISTRY_USER:?}" --password-stdin "$(registry_of "$IMAGE")" >&2
    digest=$(mktemp)
    buildah push "${tls[@]}" --quiet --digestfile "$digest" "$IMAGE:$VERSION" >&2
    echo "$IMAGE@$(cat "$digest")"
    rm -f "$digest"
    ;;
  push-chart)
    tls=()
    [ -z "${REGISTRY_CA_DIR:-}" ] || tls=(--ca-file "$REGISTRY_CA_DIR/ca.crt")
    out=$(mktemp -d)
    # The published chart installs the image published with it: its default repository is
    # IMAGE, its appVersion (the default tag) VERSION.
    cp -r "$root/helm/ocireg" "$out/ocireg"
    sed -i "s#^  repository: .*#  repository: $IMAGE#" "$out/ocireg/values.yaml"
    helm package "$out/ocireg" --version "$VERSION" --app-version "$VERSION" --destination "$out" >&2
    printf '%s' "${REGISTRY_PASSWORD:?}" |
      helm registry login "${tls[@]}" --username "${REGISTRY_USER:?}" --password-stdin \
        "$(registry_of "$CHARTS")" >&2
    helm push "${tls[@]}" "$out/ocireg-$VERSION.tgz" "oci://${CHARTS:?CHARTS is required}"
    rm -rf "$out"
    ;;
  *)
    echo "usage: release.sh build-image|push-image|push-chart (environment: see the script)" >&2
    exit 2
    ;;
esac
