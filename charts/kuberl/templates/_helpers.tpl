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

{{/* The laptop stack's credentials Secret in the release namespace: the user's, or the one the chart writes. */}}
{{- define "kuberl.stackCredentialsSecret" -}}
{{- .Values.stack.credentials.existingSecret | default (printf "%s-stack-credentials" (include "kuberl.fullname" .)) -}}
{{- end -}}

{{/* The name of the copies in the jobs' namespaces: fixed, so every job manifest can name it. */}}
{{- define "kuberl.stackCredentialsCopy" -}}kuberl-stack-credentials{{- end -}}

{{- /*
The stack's credentials as JSON, keyed as in the Secret. Per key: the value given in
stack.credentials, else the one in the Secret this release wrote before (lookup; empty
under `helm template`), else a new random one. Computed once per render and kept on the
root context: randAlphaNum differs on every call, and the Secret, the s3.json and the
pods' checksum annotations must all see the same values.
*/ -}}
{{- define "kuberl.stackCredentials" -}}
{{- if not (hasKey . "kuberlStackCredentials") -}}
{{- $c := .Values.stack.credentials -}}
{{- $old := dict -}}
{{- if not $c.existingSecret -}}
{{- with (lookup "v1" "Secret" .Release.Namespace (include "kuberl.stackCredentialsSecret" .)) -}}
{{- $old = .data | default dict -}}
{{- end -}}
{{- end -}}
{{- $given := dict "user" $c.nats.user "password" $c.nats.password "AWS_ACCESS_KEY_ID" $c.s3.accessKeyId "AWS_SECRET_ACCESS_KEY" $c.s3.secretAccessKey -}}
{{- /* NATS parses an environment value as config: a leading letter keeps it a string. */ -}}
{{- $fresh := dict "user" "kuberl" "password" (printf "%s%s" (randAlpha 1) (randAlphaNum 31)) "AWS_ACCESS_KEY_ID" (randAlphaNum 20 | upper) "AWS_SECRET_ACCESS_KEY" (randAlphaNum 40) -}}
{{- $out := dict -}}
{{- range $key := list "user" "password" "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" -}}
{{- $v := get $given $key -}}
{{- if and (not $v) (get $old $key) -}}
{{- $v = get $old $key | b64dec -}}
{{- end -}}
{{- $_ := set $out $key ($v | default (get $fresh $key)) -}}
{{- end -}}
{{- $_ := set . "kuberlStackCredentials" $out -}}
{{- end -}}
{{- get . "kuberlStackCredentials" | toJson -}}
{{- end -}}

{{/* Namespaces that get a copy of the credentials Secret (JSON list). */}}
{{- define "kuberl.stackCredentialNamespaces" -}}
{{- $c := .Values.stack.credentials -}}
{{- if and $c.existingSecret $c.namespaces -}}
{{- fail "stack.credentials.namespaces: the chart cannot copy stack.credentials.existingSecret (it never reads it); copy it into those namespaces yourself or drop existingSecret" -}}
{{- end -}}
{{- if $c.existingSecret -}}
[]
{{- else -}}
{{- $ns := list -}}
{{- range ($c.namespaces | default .Values.operator.watchNamespaces) -}}
{{- /* The release namespace already has the original under this name when fullname is kuberl. */ -}}
{{- if not (and (eq . $.Release.Namespace) (eq (include "kuberl.stackCredentialsSecret" $) (include "kuberl.stackCredentialsCopy" $))) -}}
{{- $ns = append $ns . -}}
{{- end -}}
{{- end -}}
{{- $ns | uniq | toJson -}}
{{- end -}}
{{- end -}}

{{- /*
Who may open connections to a stack server, as NetworkPolicy ingress peers: the trainer
and rollout pods the operator builds in any namespace (it labels each with
app.kubernetes.io/part-of=kuberl, children/common.py common_labels), not the agent
environments (they run model-written code and never use the buffer or the store), and
the operator itself. The chart's own pods do not carry part-of in their pod labels.
*/ -}}
{{- define "kuberl.stackClientPeers" -}}
- namespaceSelector: {}
  podSelector:
    matchLabels:
      app.kubernetes.io/part-of: kuberl
    matchExpressions:
    - {key: app.kubernetes.io/component, operator: NotIn, values: [agentenv]}
- podSelector:
    matchLabels: {{- include "kuberl.selectorLabels" (dict "ctx" . "component" "operator") | nindent 6 }}
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
# Children are read from the operator's own watches (list, watch; adapters/watch_cache.py).
# Trainer pods: created, deleted on a gang restart.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch]
{{- if .Values.rbac.readJobSecrets }}
# The Secrets a job names (its NATS credentials; existence and keys of the others) are
# read, by name, to authenticate to the job's buffer and to say which one is missing.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* The Secret the operator authenticates to NATS with when a job's own is not read:
operator.natsCredentialsSecret, else the laptop stack's. Empty: none. */}}
{{- define "kuberl.operatorNatsSecret" -}}
{{- if .Values.operator.natsCredentialsSecret -}}
{{- .Values.operator.natsCredentialsSecret -}}
{{- else if .Values.stack.nats.enabled -}}
{{- include "kuberl.stackCredentialsSecret" . -}}
{{- end -}}
{{- end }}
