#!/usr/bin/env bash
# Builds the real components the tests and the demo run on loopback, once, into a cache
# directory keyed by their versions and this module's sources:
#   kube-local  etcd + kube-apiserver + kube-controller-manager + kubelet + kubectl
#               (Kubernetes v1.36.3), and `keyring` (the kubelet's pull-secret matching)
#   helm        helm.sh/helm/v3
#   registry    the distribution registry v3
#   crane       go-containerregistry's CLI
#   pause       the kubelet tier's sandbox and workload entrypoint (pause/main.go)
#   actionlint  the GitHub Actions workflow checker (its own directory, linked into bin)
# and installs skopeo, containerd, runc and the CNI plugins from Debian when they are missing
# (containerd and a kubelet run the kubelet tier of the e2e tests), and buildah, podman and
# mmdebstrap (the image is built and run in tests/e2e/test_image.py). Prints the bin directory
# last. `build.sh --where` prints the bin directory this tree's sources would use, building
# nothing.
set -euo pipefail

KUBE_VERSION=v1.36.3
HELM_VERSION=v3.21.4
REGISTRY_VERSION=v3.1.2
CRANE_VERSION=v0.22.1
ACTIONLINT_VERSION=v1.7.12

here=$(cd "$(dirname "$0")" && pwd)
cache=${OCIREG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ocireg}
key=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" "$here/pause/main.go" | sha256sum | cut -c1-12)
key="k8s-$KUBE_VERSION-helm-$HELM_VERSION-registry-$REGISTRY_VERSION-crane-$CRANE_VERSION-$key"
dest="$cache/tools/$key"
bin="$dest/bin"
if [ "${1:-}" = "--where" ]; then
  echo "$bin"
  exit 0
fi

# Progress: one line per step, with what the step took on this project's 2-core machine the
# first time (docs/development.md, "Build and test times"), finished with its own time. What
# go and apt-get print (hundreds of `go: downloading` lines on a first build) goes to $log,
# which is shown when a step fails and kept afterwards.
step=0
# actionlint lives in a directory of its own version (below); it is one more step when missing.
lint_bin="$cache/tools/actionlint-$ACTIONLINT_VERSION/bin"
lint_steps=1
[ -x "$lint_bin/actionlint" ] && lint_steps=0
total=$((6 + lint_steps))
started=$(date +%s)
log="$dest/build.log"
begin() { # what, expected
  step=$((step + 1)); step_started=$(date +%s)
  printf '[tools %d/%d] %s (%s) ... ' "$step" "$total" "$1" "$2" >&2
}
end() { printf 'done in %ss\n' "$(( $(date +%s) - step_started ))" >&2; }
skip() { step=$((step + 1)); printf '[tools %d/%d] %s\n' "$step" "$total" "$*" >&2; }
logged() { # runs a command with its output in $log; on failure shows what it printed
  printf '\n$ %s\n' "$*" >>"$log"
  local from; from=$(( $(wc -l <"$log") + 1 ))
  if ! "$@" >>"$log" 2>&1; then
    printf 'FAILED\n[tools] `%s %s` failed; its last lines (all of them in %s):\n' "$1" "$2" "$log" >&2
    tail -n +"$from" "$log" | tail -n 40 | sed 's/^/    /' >&2
    exit 1
  fi
}

export GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false"
export CGO_ENABLED=0

mkdir -p "$bin"

if [ -f "$dest/.complete" ]; then
  printf '[tools] cached: %s\n' "$bin" >&2
  total=$((1 + lint_steps))
else
  command -v go >/dev/null 2>&1 || { echo "[tools] go is required to build the tools (the version in tests/cluster/go.mod or later)" >&2; exit 1; }
  : >"$log"
  printf '[tools] building into %s; the output of go: %s\n' "$dest" "$log" >&2
  if [ -x "$bin/kube-local" ]; then
    skip "kube-local $KUBE_VERSION: already built"
  else
    begin "kube-local $KUBE_VERSION: etcd, kube-apiserver, kube-controller-manager, kubelet, kubectl" \
      "downloads the Kubernetes modules and compiles them, the longest step: 14 min cold on a shared 2-core machine"
    minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags="$ldflags -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    (cd "$here" && logged go build -ldflags "$ldflags" -o "$bin/kube-local.tmp" .)
    mv "$bin/kube-local.tmp" "$bin/kube-local"
    end
  fi
  # The kubelet tier's pause image: a few hundred kilobytes.
  begin "pause: the kubelet tier's sandbox image" "seconds"
  (cd "$here" && logged go build -ldflags "-s -w" -o "$bin/pause" ./pause)
  end
  for name in kubectl kube-apiserver kube-controller-manager kubelet etcd; do
    ln -sf kube-local "$bin/$name"
  done

  go_install() { # name module@version expected
    if [ -x "$bin/$1" ]; then skip "$1: already built"; return; fi
    begin "$1 ${2##*@}" "$3"
    GOBIN="$bin" logged go install -ldflags "-s -w" "$2"
    end
  }
  go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "about 1.5 min cold"
  go_install registry "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION" "about 1.5 min cold"
  go_install crane "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION" "seconds, after the registry"
  touch "$dest/.complete"
fi

# actionlint (checks .github/workflows: tests/e2e/test_release.py) in a directory of its own
# version, so it never changes the key above; linked into the keyed bin directory.
if [ ! -x "$lint_bin/actionlint" ]; then
  begin "actionlint $ACTIONLINT_VERSION" "about 15 s cold"
  mkdir -p "$lint_bin"
  GOBIN="$lint_bin" logged go install -ldflags "-s -w" "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
  end
fi
ln -sf "$lint_bin/actionlint" "$bin/actionlint"

# Debian packages: skopeo (an independent registry client); containerd, runc and the CNI
# plugins (loopback) for the kubelet tier; buildah, podman and mmdebstrap for the image tests;
# shellcheck, which actionlint runs on the workflows' scripts; promtool (in `prometheus`:
# Prometheus' own rule and metrics checker, for the monitoring bundle's tests).
# Installing them starts nothing: the devenv runs containerd itself, and buildah and podman
# with their storage, state and configuration in a temporary directory, and policy-rc.d keeps
# the packages' services from starting.
missing=()
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v containerd >/dev/null 2>&1 || missing+=(containerd)
command -v runc >/dev/null 2>&1 || missing+=(runc)
[ -x /usr/lib/cni/loopback ] || missing+=(containernetworking-plugins)
for tool in buildah podman mmdebstrap shellcheck; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -eq 0 ]; then
  skip "Debian packages: $(skopeo --version), $(containerd --version | cut -d' ' -f1,3), $(runc --version | head -1), $(buildah --version | cut -d' ' -f1-3), $(podman --version), $(promtool --version 2>&1 | head -1)"
elif [ "$(id -u)" -ne 0 ]; then
  skip "Debian packages: ${missing[*]} missing and not root: install them with apt-get (the kubelet tier skips without containerd, the image tests without buildah)"
  command -v skopeo >/dev/null 2>&1 || { echo "skopeo is required" >&2; exit 1; }
else
  begin "Debian packages: installing ${missing[*]}" "about 1-2 min"
  export DEBIAN_FRONTEND=noninteractive
  logged apt-get update
  # policy-rc.d stops a Debian maintainer script from starting a system containerd.
  policy=/usr/sbin/policy-rc.d
  [ -e "$policy" ] || { printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; trap 'rm -f "$policy"' EXIT; }
  logged apt-get install -y --no-install-recommends "${missing[@]}"
  end
fi

# `current` is only a fallback for checkouts that do not locate their tools by key
# (processes.py asks `build.sh --where`); never repoint it from under another tree.
[ -e "$cache/tools/current" ] || ln -sfn "$key" "$cache/tools/current"
printf '[tools] ready in %ss: %s (%s)\n' "$(( $(date +%s) - started ))" "$bin" "$("$bin/kubectl" version --client 2>/dev/null | head -1)" >&2
echo "$bin"
