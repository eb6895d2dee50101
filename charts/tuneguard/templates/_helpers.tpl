{{/* Names */}}
{{- define "tuneguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tuneguard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tuneguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The metrics Service; Prometheus Operator names the scrape job after it: up{job="<this>"}. */}}
{{- define "tuneguard.metricsServiceName" -}}
{{- printf "%s-operator" (include "tuneguard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tuneguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tuneguard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels */}}
{{- define "tuneguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tuneguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tuneguard.labels" -}}
helm.sh/chart: {{ include "tuneguard.chart" . }}
{{ include "tuneguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tuneguard
{{- end }}

{{/* The namespaces the operator watches when not cluster-wide (default: the release namespace). */}}
{{- define "tuneguard.watchNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- .Values.watch.namespaces | uniq | join "," }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* "true" when the Prometheus Operator objects should be rendered, "" otherwise. */}}
{{- define "tuneguard.monitoringEnabled" -}}
{{- if and .Values.monitoring.enabled (or .Values.monitoring.force (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) -}}
true
{{- end -}}
{{- end }}

{{/*
The operator's permissions, the same rules for the ClusterRole (cluster-wide) and for each Role
(namespaced). Exactly what tuneguard_operator does (kube.py, reconcile.py, handlers.py):
- finetunejobs: watched through kopf (list/watch), read, patched by kopf, deleted after
  runPolicy.ttlSecondsAfterFinished; status written with merge patches.
- finetunejobs/finalizers update: the children's ownerReferences set blockOwnerDeletion, which the
  OwnerReferencesPermissionEnforcement admission plugin (when a cluster enables it) allows only to
  those who may update the owner's finalizers.
- The children of each job: ConfigMap, headless Service, ServiceAccount + Role + RoleBinding for the
  trainer: get, create, merge-patch (never listed, watched or deleted: garbage collection removes them).
- The trainer's Role grants get on its FineTuneJob and get/patch on its status: RBAC's escalation
  check lets the operator create that Role only because it holds those verbs itself (above).
- batch jobs: watched (label-selected) and deleted (Foreground) for a group restart.
- pods: list only (label-selected, while workers are not ready), to say in the status why they are stuck.
- events (core/v1): the reconciler posts its own; kopf's posting is off.
No secrets, no nodes, no pod writes, nothing cluster-scoped in namespaced mode.
*/}}
{{- define "tuneguard.rbacRules" -}}
- apiGroups: ["tuneguard.io"]
  resources: ["finetunejobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["tuneguard.io"]
  resources: ["finetunejobs/status"]
  verbs: ["get", "patch"]
- apiGroups: ["tuneguard.io"]
  resources: ["finetunejobs/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["configmaps", "services", "serviceaccounts"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "delete"]  # delete: force-deleting workers stuck on a lost node (runPolicy.forceDeleteAfterSeconds)
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "patch"]  # a queued job's reason, and runPolicy.suspend as Kueue's workload deactivation
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
