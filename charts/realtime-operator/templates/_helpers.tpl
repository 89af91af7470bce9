{{/* The release's full name: the release name, with the chart name unless it contains it. */}}
{{- define "realtime-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "realtime-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "realtime-operator.labels" -}}
{{ include "realtime-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "realtime-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "realtime-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "realtime-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "realtime-operator.serverImage" -}}
{{- printf "%s:%s" .Values.serverImage.repository (default .Chart.AppVersion .Values.serverImage.tag) -}}
{{- end -}}

{{/*
The rules of every RealtimeServer namespace: exactly what the operator calls
(operator/src/run.rs watches; reconcile/ applies, deletes and records Events).
*/}}
{{- define "realtime-operator.rules" -}}
# Watch RealtimeServers, add/remove the finalizer (patch), write status.
- apiGroups: [realtime.dev]
  resources: [realtimeservers]
  verbs: [list, watch, patch]
- apiGroups: [realtime.dev]
  resources: [realtimeservers/status]
  verbs: [patch]
# Children carry an owner reference with blockOwnerDeletion; clusters with the
# OwnerReferencesPermissionEnforcement admission plugin require this.
- apiGroups: [realtime.dev]
  resources: [realtimeservers/finalizers]
  verbs: [update]
# The server pods: watched (list/watch), server-side applied (create/patch:
# an apply that creates needs create), deleted first on cleanup.
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch, create, patch]
# Applied with 2+ replicas where policy/v1 is served; below 2, looked up
# (once per operator process) and deleted if there is one.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch, delete]
# Readiness of the server pods; a slot is dropped only once its pod is gone.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# The database password and JWT secret the spec refers to (never written).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* The namespaces whose server pods get the ingress NetworkPolicy. */}}
{{- define "realtime-operator.serverNamespaces" -}}
{{- if .Values.networkPolicy.serverNamespaces -}}
{{- toJson .Values.networkPolicy.serverNamespaces -}}
{{- else -}}
{{- toJson (list (default .Release.Namespace .Values.watchNamespace)) -}}
{{- end -}}
{{- end -}}
