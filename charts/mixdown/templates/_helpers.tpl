{{/*
Names, labels and small shared pieces of the Mixdown chart.
*/}}

{{- define "mixdown.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object name; see fullnameOverride. */}}
{{- define "mixdown.fullname" -}}
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

{{- define "mixdown.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. Call with (dict "ctx" $ "component" "api"). */}}
{{- define "mixdown.labels" -}}
helm.sh/chart: {{ include "mixdown.chart" .ctx }}
{{ include "mixdown.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: mixdown
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels that select a component's Pods; stable across upgrades. */}}
{{- define "mixdown.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mixdown.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/* An image reference. Call with (dict "ctx" $ "image" .Values.api.image). */}}
{{- define "mixdown.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{- define "mixdown.operator.fullname" -}}
{{- printf "%s-operator" (include "mixdown.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mixdown.api.fullname" -}}
{{- printf "%s-api" (include "mixdown.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mixdown.worker.fullname" -}}
{{- printf "%s-worker" (include "mixdown.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mixdown.operator.serviceAccountName" -}}
{{- default (include "mixdown.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- end -}}

{{- define "mixdown.api.serviceAccountName" -}}
{{- default (include "mixdown.api.fullname" .) .Values.api.serviceAccount.name -}}
{{- end -}}

{{- define "mixdown.worker.serviceAccountName" -}}
{{- default (include "mixdown.worker.fullname" .) .Values.worker.serviceAccount.name -}}
{{- end -}}

{{/*
The PodDisruptionBudget API: policy/v1 from Kubernetes 1.21, policy/v1beta1 before. Decided from the
cluster's version (`helm template --kube-version` without a cluster), so rendering stays deterministic.
*/}}
{{- define "mixdown.pdbApiVersion" -}}
{{- if semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}

{{/*
Settings both the operator and the API read (log format, storage), as environment variables. Empty settings are
left out, so a component that needs one says so by its flag name in its log.
*/}}
{{- define "mixdown.storageEnv" -}}
- name: MIXDOWN_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.storage.endpoint }}
- name: MIXDOWN_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: MIXDOWN_S3_REGION
  value: {{ .Values.storage.region | quote }}
{{- with .Values.storage.bucket }}
- name: MIXDOWN_S3_BUCKET
  value: {{ . | quote }}
{{- end }}
- name: MIXDOWN_S3_PATH_STYLE
  value: {{ .Values.storage.pathStyle | quote }}
{{- end -}}

{{/* Storage credentials from storage.existingSecret, for the API and the test Pod. */}}
{{- define "mixdown.storageCredentialsEnv" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storage.existingSecret | quote }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storage.existingSecret | quote }}
      key: AWS_SECRET_ACCESS_KEY
{{- end -}}

{{/*
The address a component listens on for `port`: every address, or the Pod's own IP
(`listenOnPodIP`; the container's env then defines POD_IP before the variable that uses it).
*/}}
{{- define "mixdown.listenAddr" -}}
{{- if .ctx.Values.listenOnPodIP -}}
{{- printf "$(POD_IP):%d" (int .port) -}}
{{- else -}}
{{- printf "0.0.0.0:%d" (int .port) -}}
{{- end -}}
{{- end }}

{{/*
The POD_IP variable that mixdown.listenAddr refers to, when `listenOnPodIP` is on.
*/}}
{{- define "mixdown.podIPEnv" -}}
{{- if .Values.listenOnPodIP }}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end }}
{{- end }}

{{/*
Removes every `x-kubernetes-validations` from a schema (a map from fromYaml), in place, at any
depth: for servers before 1.23, which refuse the field.
*/}}
{{- define "mixdown.withoutValidations" -}}
{{- if kindIs "map" . -}}
{{- $_ := unset . "x-kubernetes-validations" -}}
{{- range $key, $value := . }}{{ include "mixdown.withoutValidations" $value }}{{ end -}}
{{- else if kindIs "slice" . -}}
{{- range . }}{{ include "mixdown.withoutValidations" . }}{{ end -}}
{{- end -}}
{{- end }}
