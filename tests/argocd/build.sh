#!/usr/bin/env bash
# Builds argocd-repo (main.go here), which resolves a repository URL with Argo CD's own
# util/db code from the argo-cd Go module, once, into a cache directory of its own keyed by
# this directory's sources (apart from tests/cluster's tools: changing one never rebuilds the
# other). Prints the binary's path last; `build.sh --where` prints it, building nothing.
set -euo pipefail

ARGOCD_VERSION=v3.5.8

here=$(cd "$(dirname "$0")" && pwd)
cache=${OCIREG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ocireg}
key=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)
dest="$cache/argocd/argo-cd-$ARGOCD_VERSION-$key"
if [ "${1:-}" = "--where" ]; then
  echo "$dest/argocd-repo"
  exit 0
fi

if [ -x "$dest/argocd-repo" ]; then
  printf '[argocd] cached: %s\n' "$dest/argocd-repo" >&2
else
  started=$(date +%s)
  printf '[argocd] argocd-repo (Argo CD %s util/db): building, about 4.5 min of CPU cold (2 to 3 min on 2 idle cores)\n' \
    "$ARGOCD_VERSION" >&2
  mkdir -p "$dest"
  (cd "$here" && GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false" CGO_ENABLED=0 \
    go build -ldflags "-s -w" -o "$dest/argocd-repo.tmp" .)
  mv "$dest/argocd-repo.tmp" "$dest/argocd-repo"
  printf '[argocd]     done in %ss\n' "$(( $(date +%s) - started ))" >&2
fi
echo "$dest/argocd-repo"
