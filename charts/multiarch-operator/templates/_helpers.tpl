{{/* Chart name, at most 63 characters. */}}
{{- define "multiarch-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name when it contains the chart name, else <release>-<chart>. */}}
{{- define "multiarch-operator.fullname" -}}
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

{{- define "multiarch-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "multiarch-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "multiarch-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "multiarch-operator.labels" -}}
{{ include "multiarch-operator.selectorLabels" . }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: multiarch-operator
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "multiarch-operator.chart" . }}
{{- end }}

{{- define "multiarch-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "multiarch-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false (the controller must not run as the namespace's default ServiceAccount)" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "multiarch-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
RBAC rules for the namespaces the controller reconciles: a ClusterRole when it watches all
namespaces, a Role in each namespace otherwise. config/rbac/expected-rules.yaml lists the same
(apiGroup, resource, verbs) and e2e/install_test.sh checks the rendered RBAC equals it.
Nothing on Secrets: the git token is read by the Batch job from Secrets Manager, never here.
*/}}
{{- define "multiarch-operator.watchedRules" -}}
# The builds: listed and watched to reconcile them, read one at a time, and patched to add or
# remove the finalizer that terminates a build's Batch jobs when it is deleted; deleted once its
# ttlSecondsAfterFinished (or the controller's default) has passed since it finished.
- apiGroups: ["multiarch.dev"]
  resources: ["multiarchbuilds"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# A build's status, written by server-side apply (a patch) under one field manager.
- apiGroups: ["multiarch.dev"]
  resources: ["multiarchbuilds/status"]
  verbs: ["patch"]
# The <build>-image ConfigMap is owned by its build with blockOwnerDeletion; setting that needs
# update on the owner's finalizers subresource (OwnerReferencesPermissionEnforcement).
- apiGroups: ["multiarch.dev"]
  resources: ["multiarchbuilds/finalizers"]
  verbs: ["update"]
# Job gating: find the suspended Jobs labelled multiarch.dev/after=<build> (list, watch) and
# release them (patch spec.suspend to false). No create or delete: it never makes Jobs.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "patch"]
# The <build>-image ConfigMap (image, digest, tag, digest-<arch>), written by server-side apply:
# a patch, authorized as create too when it creates the ConfigMap. Never read, no list or watch.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "patch"]
# The build's Namespace, read (get) for its labels: they decide which MultiArchBuildPolicies
# apply to the build. Only the namespaces reconciled: a Role there grants get on that Namespace.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get"]
# Events on builds and gated Jobs (kube-runtime's Recorder, events.k8s.io/v1): create an
# event, patch it to count a repeat.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Cluster-scoped reads: a ClusterRole whatever controller.namespaces says. */}}
{{- define "multiarch-operator.policyRules" -}}
# The policies: listed to check a build against every policy that selects its namespace
# before anything is submitted.
- apiGroups: ["multiarch.dev"]
  resources: ["multiarchbuildpolicies"]
  verbs: ["list"]
{{- end }}

{{/* Leader election, in the release namespace only. */}}
{{- define "multiarch-operator.leaseRules" -}}
# Leader election: the replicas share one Lease in the release namespace; get reads the
# holder, create makes the Lease the first time, patch takes, renews and releases it
# (merge patches conditional on its resourceVersion).
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "patch"]
{{- end }}
