#!/usr/bin/env bash
# Builds the real components the tests and the demo run on loopback, once, into a cache
# directory keyed by their versions and this module's sources:
#   kube-local  etcd + kube-apiserver + kube-controller-manager + kubectl (Kubernetes v1.36.3)
#   helm        helm.sh/helm/v3
#   registry    the distribution registry v3
#   crane       go-containerregistry's CLI
# and installs skopeo from Debian when it is missing. Prints the bin directory last.
set -euo pipefail

KUBE_VERSION=v1.36.3
HELM_VERSION=v3.21.4
REGISTRY_VERSION=v3.1.2
CRANE_VERSION=v0.22.1

here=$(cd "$(dirname "$0")" && pwd)
cache=${OCIREG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ocireg}
key=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)
key="k8s-$KUBE_VERSION-helm-$HELM_VERSION-registry-$REGISTRY_VERSION-crane-$CRANE_VERSION-$key"
dest="$cache/tools/$key"
bin="$dest/bin"

step=0
total=6
started=$(date +%s)
progress() { step=$((step + 1)); printf '[tools %d/%d] %s\n' "$step" "$total" "$*" >&2; }
took() { printf '[tools]     done in %ss\n' "$(( $(date +%s) - $1 ))" >&2; }

export GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false"
export CGO_ENABLED=0

mkdir -p "$bin"

if [ -f "$dest/.complete" ]; then
  printf '[tools] cached: %s\n' "$bin" >&2
else
  t=$(date +%s)
  if [ -x "$bin/kube-local" ]; then
    progress "kube-local $KUBE_VERSION: already built"
  else
    progress "kube-local $KUBE_VERSION (etcd, kube-apiserver, kube-controller-manager, kubectl): building, the longest step (about 5 min cold on 2 cores)"
    minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags="$ldflags -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    (cd "$here" && go build -ldflags "$ldflags" -o "$bin/kube-local.tmp" .)
    mv "$bin/kube-local.tmp" "$bin/kube-local"
    took "$t"
  fi
  for name in kubectl kube-apiserver kube-controller-manager etcd; do
    ln -sf kube-local "$bin/$name"
  done

  go_install() { # name module@version
    local t; t=$(date +%s)
    if [ -x "$bin/$1" ]; then progress "$1: already built"; return; fi
    progress "$1 ${2##*@}: building"
    GOBIN="$bin" go install -ldflags "-s -w" "$2"
    took "$t"
  }
  go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  go_install registry "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION"
  go_install crane "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
  touch "$dest/.complete"
fi

if command -v skopeo >/dev/null 2>&1; then
  progress "skopeo: $(skopeo --version)"
else
  progress "skopeo: installing from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends skopeo >/dev/null
fi

ln -sfn "$key" "$cache/tools/current"
progress "tools ready in $(( $(date +%s) - started ))s: $bin ($("$bin/kubectl" version --client 2>/dev/null | head -1))"
echo "$bin"
