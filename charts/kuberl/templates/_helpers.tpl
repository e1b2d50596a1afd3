{{/* Names. fullname is the release name unless it already contains the chart name. */}}
{{- define "kuberl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kuberl.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kuberl.operatorName" -}}
{{- printf "%s-operator" (include "kuberl.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kuberl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kuberl.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kuberl.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kuberl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kuberl
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "operator"). */}}
{{- define "kuberl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kuberl.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kuberl.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kuberl.natsUrl" -}}
{{- if .Values.operator.natsUrl -}}
{{- .Values.operator.natsUrl -}}
{{- else if .Values.stack.nats.enabled -}}
{{- printf "nats://%s-nats.%s:4222" (include "kuberl.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The PSS "restricted" container security context every container of the chart uses. */}}
{{- define "kuberl.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- /*
What the operator does to the objects it serves, in every namespace it watches.
No Secrets: pods reference credential Secrets by name (secretKeyRef), which needs no
grant to the operator. No pods/exec, no nodes, no RBAC objects.
*/ -}}
{{- define "kuberl.operatorRules" -}}
# Exactly the calls the operator makes (tests/charts/test_rbac_derived.py derives them
# from the code and fails on a grant no code uses). kopf lists, watches and patches the
# three kinds (finalizers, progress annotations); the operator reads them, creates a job's
# inline pool and envs, patches specs and status, and deletes a job after its TTL.
- apiGroups: [kuberl.io]
  resources: [rljobs]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [kuberl.io]
  resources: [rolloutpools, agentenvs]
  verbs: [get, list, watch, create, patch]
- apiGroups: [kuberl.io]
  resources: [rljobs/status, rolloutpools/status, agentenvs/status]
  verbs: [patch]
# Children are created with blockOwnerDeletion owner references, which needs update on
# the owner's finalizers subresource.
- apiGroups: [kuberl.io]
  resources: [rljobs/finalizers, rolloutpools/finalizers, agentenvs/finalizers]
  verbs: [update]
# Trainer pods: created, listed by the job's selector, deleted on a gang restart.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, create, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, create]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, patch]
# The Secrets a job names (its NATS credentials; existence and keys of the others) are
# read, by name, to authenticate to the job's buffer and to say which one is missing.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, create, patch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
