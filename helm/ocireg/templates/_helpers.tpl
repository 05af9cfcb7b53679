{{/* The release's full name, at most 63 characters. */}}
{{- define "ocireg.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ocireg.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "ocireg.labels" -}}
{{ include "ocireg.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ocireg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ocireg.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ocireg.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Lease the replicas elect their leader with. */}}
{{- define "ocireg.leaseName" -}}
{{- printf "%s-leader" (include "ocireg.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Service every replica's metrics endpoint is reached through. */}}
{{- define "ocireg.metricsService" -}}
{{- printf "%s-metrics" (include "ocireg.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
