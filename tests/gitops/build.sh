#!/usr/bin/env bash
# Builds the GitOps tools' own code the e2e tests run (tests/e2e/test_gitops.py), once, into
# a cache directory of its own keyed by these sources (apart from tests/cluster's tools:
# changing one never rebuilds the other):
#   argocd-repo  Argo CD's util/db repository lookup (argo-cd module)   argocd/main.go
#   flux-auth    the libraries Flux's source-controller reads a secretRef with
#                (go-containerregistry's authn/kubernetes, docker/cli's config)  flux/main.go
# Prints the bin directory last; `build.sh --where` prints it, building nothing.
set -euo pipefail

ARGOCD_VERSION=v3.5.8

here=$(cd "$(dirname "$0")" && pwd)
cache=${OCIREG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ocireg}
key=$(cat "$here"/argocd/go.mod "$here"/argocd/go.sum "$here"/argocd/main.go \
  "$here"/flux/go.mod "$here"/flux/go.sum "$here"/flux/main.go | sha256sum | cut -c1-12)
bin="$cache/gitops/argo-cd-$ARGOCD_VERSION-$key/bin"
if [ "${1:-}" = "--where" ]; then
  echo "$bin"
  exit 0
fi

export GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false"
export CGO_ENABLED=0
mkdir -p "$bin"
build() { # name directory what
  local started
  if [ -x "$bin/$1" ]; then printf '[gitops] %s: cached\n' "$1" >&2; return; fi
  started=$(date +%s)
  printf '[gitops] %s (%s): building, %s\n' "$1" "$2" "$3" >&2
  (cd "$here/$2" && go build -ldflags "-s -w" -o "$bin/$1.tmp" .)
  mv "$bin/$1.tmp" "$bin/$1"
  printf '[gitops]     done in %ss\n' "$(( $(date +%s) - started ))" >&2
}
build argocd-repo argocd "Argo CD $ARGOCD_VERSION, about 4.5 min of CPU cold (2 to 3 min on 2 idle cores)"
build flux-auth flux "about 3 min of CPU cold, 1.5 with the tools build's Go cache"
echo "$bin"
