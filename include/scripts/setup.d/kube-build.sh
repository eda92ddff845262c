#!/usr/bin/env bash
# ./dev setup step: Kubernetes and its cluster add-ons, built from the Go module
# proxy at the versions pinned in manifests/versions.yaml.
#
#   kubernetes  kubeadm kubelet kubectl kube-apiserver kube-controller-manager
#               kube-scheduler kube-proxy (own module: k8s.io/kubernetes with a
#               replace directive per staging module, as its own go.mod has)
#   etcd        etcd etcdctl etcdutl (own module: kubeadm's default etcd; inside the
#               Kubernetes module, version selection would raise Kubernetes' etcd libraries)
#   coredns     coredns
#   flannel     flanneld (the flannel CNI choice)
#   cni         bridge host-local loopback portmap (containernetworking/plugins)
#   helm        helm
#   local-path  local-path-provisioner (the storage stage's fallback without Ceph disks)
#
# Each component lands in $CACHE/kube/<component>-<version>/bin with a .done stamp,
# so a warm setup only checks the stamps; Go's own module and build caches make a
# rebuild after a stamp loss take seconds. Progress goes to stderr, the one summary
# line to stdout (dev-setup.sh collects it). With --dest COMPONENT it prints that
# component's bin folder.
set -euo pipefail

ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}"
CACHE="${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/datacloud}"
# shellcheck source=include/scripts/pin.sh
. "$ROOT/include/scripts/pin.sh"

KUBE=$(pin version)            # kubernetes.version, e.g. 1.34.2
ETCD=$(pin etcd_version)
COREDNS=$(pin coredns_version)
FLANNEL=$(pin flannel_version)
CNI=$(pin cni_plugins_version)
HELM=$(pin helm)
LOCAL_PATH=$(pin local_path_image)
LOCAL_PATH=${LOCAL_PATH##*:} # the image's tag is the module version

dest_of() {
  case "$1" in
    kubernetes) echo "$CACHE/kube/kubernetes-v$KUBE" ;;
    etcd) echo "$CACHE/kube/etcd-v$ETCD" ;;
    coredns) echo "$CACHE/kube/coredns-v${COREDNS#v}" ;;
    flannel) echo "$CACHE/kube/flannel-v${FLANNEL#v}" ;;
    cni) echo "$CACHE/kube/cni-plugins-v${CNI#v}" ;;
    helm) echo "$CACHE/kube/helm-v${HELM#v}" ;;
    local-path) echo "$CACHE/kube/local-path-provisioner-v${LOCAL_PATH#v}" ;;
    *) echo "unknown component $1" >&2; exit 2 ;;
  esac
}
if [ "${1:-}" = "--dest" ]; then
  echo "$(dest_of "$2")/bin"
  exit 0
fi

command -v go >/dev/null || { echo "Go is missing; install Go 1.24 or newer to build Kubernetes." >&2; exit 1; }
export CGO_ENABLED=0 GOFLAGS="-mod=mod"
log() { printf 'setup | kube-build | %s\n' "$*" >&2; }
built=()
skipped=()

# build NAME VERSION FUNCTION: run FUNCTION in a scratch module dir unless stamped.
build() {
  local name=$1 version=$2 fn=$3 dest
  dest=$(dest_of "$name")
  if [ -f "$dest/.done" ]; then
    skipped+=("$name $version")
    return
  fi
  local work="$dest.work" t0
  t0=$(date +%s)
  rm -rf "$work" "$dest"
  mkdir -p "$work/bin"
  log "$name $version: building (cold: minutes; warm Go cache: seconds)"
  (cd "$work" && "$fn" "$version")
  mkdir -p "$dest"
  mv "$work/bin" "$dest/bin"
  rm -rf "$work"
  touch "$dest/.done"
  log "$name $version: built in $(( $(date +%s) - t0 ))s"
  built+=("$name $version ($(( $(date +%s) - t0 ))s)")
}

build_kubernetes() {
  local v=$1 minor src date
  minor=$(echo "$v" | cut -d. -f2)
  src=$(go mod download -json "k8s.io/kubernetes@v$v" | sed -nE 's/^[[:space:]]*"Dir": "(.*)",?$/\1/p')
  [ -f "$src/go.mod" ] || { echo "go mod download k8s.io/kubernetes@v$v failed" >&2; exit 1; }
  {
    echo "module datacloud.local/kube-build"
    echo
    echo "go 1.24.0"
    echo
    echo "require k8s.io/kubernetes v$v"
    echo
    echo "replace ("
    # every staging module k8s.io/kubernetes replaces with ./staging/src/k8s.io/X
    sed -nE 's#^[[:space:]]*(k8s\.io/[a-z0-9-]+) => \./staging/src/k8s\.io/[a-z0-9-]+$#\1#p' "$src/go.mod" \
      | while read -r m; do echo "	$m => $m v0.$minor.${v##*.}"; done
    echo ")"
  } > go.mod
  cat > tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubeadm"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
EOF
  log "kubernetes v$v: go mod tidy ($(grep -c ' => ' go.mod) staging modules)"
  go mod tidy >/dev/null 2>&1 || go mod tidy
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=v$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  for cmd in kubectl kubeadm kubelet kube-proxy kube-scheduler kube-controller-manager kube-apiserver; do
    local t0; t0=$(date +%s)
    go build -trimpath -ldflags "$ld" -o "bin/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    log "kubernetes v$v: $cmd $(( $(date +%s) - t0 ))s"
  done
  local got; got=$(bin/kubeadm version -o short)
  [ "$got" = "v$v" ] || { echo "kubeadm reports $got, not v$v" >&2; exit 1; }
}

build_etcd() {
  local v=$1 out
  cat > go.mod <<EOF
module datacloud.local/etcd-build

go 1.24

require (
	go.etcd.io/etcd/api/v3 v$v
	go.etcd.io/etcd/client/pkg/v3 v$v
	go.etcd.io/etcd/client/v3 v$v
	go.etcd.io/etcd/pkg/v3 v$v
	go.etcd.io/etcd/server/v3 v$v
	go.etcd.io/etcd/etcdctl/v3 v$v
	go.etcd.io/etcd/etcdutl/v3 v$v
)
EOF
  cat > tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/etcdutl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
EOF
  go mod tidy >/dev/null 2>&1 || go mod tidy
  for m in server:etcd etcdctl:etcdctl etcdutl:etcdutl; do
    go build -trimpath -ldflags "-s -w" -o "bin/${m#*:}" "go.etcd.io/etcd/${m%%:*}/v3"
  done
  out=$(bin/etcd --version)  # captured first: grep -q exits at the first match and would SIGPIPE etcd under pipefail
  grep -q "etcd Version: $v" <<<"$out" || { echo "etcd does not report $v" >&2; exit 1; }
}

build_coredns() {
  local v=$1
  GOBIN="$PWD/bin" go install -trimpath -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$v" \
    "github.com/coredns/coredns@$v"
}

build_flannel() {
  # Built from the module's source with two backends left out: tencentvpc (its
  # Tencent Cloud SDK module is not served by the Go module proxy) and udp (needs
  # cgo; deprecated upstream). vxlan, host-gw, ipip, wireguard and ipsec remain.
  local v=$1 src out
  src=$(go mod download -json "github.com/flannel-io/flannel@$v" | sed -nE 's/^[[:space:]]*"Dir": "(.*)",?$/\1/p')
  [ -f "$src/main.go" ] || { echo "go mod download github.com/flannel-io/flannel@$v failed" >&2; exit 1; }
  cp -r "$src" src && chmod -R u+w src
  sed -i -e '/pkg\/backend\/tencentvpc"/d' -e '/pkg\/backend\/udp"/d' src/main.go
  (cd src && go build -trimpath -ldflags "-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$v" -o ../bin/flanneld .)
  out=$(bin/flanneld --version 2>&1)
  grep -qx "$v" <<<"$out" || { echo "flanneld does not report $v" >&2; exit 1; }
}

build_cni() {
  local v=$1 p
  for p in main/bridge main/loopback ipam/host-local meta/portmap; do
    GOBIN="$PWD/bin" go install -trimpath \
      -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$v" \
      "github.com/containernetworking/plugins/plugins/$p@$v"
  done
}

build_helm() {
  local v=$1
  GOBIN="$PWD/bin" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$v \
    -X helm.sh/helm/v3/internal/version.gitTreeState=clean" "helm.sh/helm/v3/cmd/helm@$v"
  bin/helm version --template '{{.Version}}' | grep -qx "$v" || { echo "helm does not report $v" >&2; exit 1; }
}

build_local_path() {
  local v=$1
  GOBIN="$PWD/bin" go install -trimpath -ldflags "-s -w -X main.VERSION=$v" "github.com/rancher/local-path-provisioner@$v"
  bin/local-path-provisioner --version | grep -q "version $v\$" || { echo "local-path-provisioner does not report $v" >&2; exit 1; }
}

build kubernetes "$KUBE" build_kubernetes
build etcd "$ETCD" build_etcd
build coredns "v${COREDNS#v}" build_coredns
build flannel "v${FLANNEL#v}" build_flannel
build cni "v${CNI#v}" build_cni
build helm "v${HELM#v}" build_helm
build local-path "v${LOCAL_PATH#v}" build_local_path

if [ "${#built[@]}" -gt 0 ]; then
  echo "kubernetes components built: ${built[*]}${skipped:+; skipped ${skipped[*]}}"
else
  echo "skipped: kubernetes components (${skipped[*]})"
fi
