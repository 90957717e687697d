{{/* Names: at most 63 characters, as Kubernetes names and label values must be. */}}
{{- define "siked.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "siked.fullname" -}}
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

{{- define "siked.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "siked.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "siked.selectorLabels" -}}
app.kubernetes.io/name: {{ include "siked.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "siked.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "siked.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "siked.image" -}}
{{- printf "%s:%s" .repository (.tag | default .appVersion) }}
{{- end }}

{{/*
RBAC, from the API calls the operator makes (tests/test_helm.py checks these rules against the calls
recorded in an end-to-end run: every call allowed, every rule used).
*/}}

{{/* kopf, cluster-wide: it watches CRDs to notice its resources (re)appear and, when it serves only
some namespaces, Namespaces to notice them appear. */}}
{{- define "siked.rules.kopfCluster" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}

{{/* kopf, where the runs are: events on the runs (stage started, succeeded, failed…). */}}
{{- define "siked.rules.kopfNamespaced" -}}
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* Our handlers, where the runs are. */}}
{{- define "siked.rules.handlers" -}}
# Runs: watched; kopf patches its finalizer and annotations on them, the run's driver its status.
- apiGroups: [siked.io]
  resources: [distillationruns]
  verbs: [list, watch, patch]
- apiGroups: [siked.io]
  resources: [distillationruns/status]
  verbs: [patch]
# Stage Jobs: watched, created per stage attempt, deleted after their TTL, on failure and with their run;
# read when a Job of a stage's name already exists (whose is it?).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
# Pods of stage Jobs: why one has not started, the exit code and termination message of a failed one.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Headless Services of multi-node train Jobs (their pods' names for the rendezvous); owned by the run, so
# garbage collection deletes them with it.
- apiGroups: [""]
  resources: [services]
  verbs: [create]
{{- end }}
