{{/* Chart name and release-scoped names. */}}
{{- define "fleet.name" -}}inference-fleet{{- end -}}

{{- define "fleet.fullname" -}}
{{- if contains (include "fleet.name" .) .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "fleet.name" .) | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: inference-fleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "fleet.selector" -}}
app.kubernetes.io/name: {{ include "fleet.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "fleet.configName" -}}{{ include "fleet.fullname" . }}-config{{- end -}}

{{- define "fleet.secretName" -}}
{{- default (printf "%s-secrets" (include "fleet.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "fleet.autoscalerServiceAccount" -}}
{{- default (printf "%s-autoscaler" (include "fleet.fullname" .)) .Values.autoscaler.serviceAccount.name -}}
{{- end -}}

{{- define "fleet.gatewayImage" -}}
{{- $img := .Values.images.gateway -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}

{{/* Image of a worker pool: (dict "root" $ "pool" $pool); a pool may override repository and tag. */}}
{{- define "fleet.workerImage" -}}
{{- $img := merge (deepCopy (default dict .pool.image)) .root.Values.images.worker -}}
{{- printf "%s:%s" $img.repository (default (printf "%s-cpu" .root.Chart.AppVersion) $img.tag) -}}
{{- end -}}

{{/* A model name as the autoscaler's kubernetes backend writes it into a Deployment name. */}}
{{- define "fleet.k8sName" -}}{{ . | lower | replace "_" "-" }}{{- end -}}

{{/* Name of a pool: its `name`, else its single model. */}}
{{- define "fleet.poolName" -}}
{{- if .name -}}
{{- include "fleet.k8sName" .name -}}
{{- else if eq (len .models) 1 -}}
{{- include "fleet.k8sName" (first .models) -}}
{{- else -}}
{{- fail (printf "worker pool %v serves several models: give it a name" .models) -}}
{{- end -}}
{{- end -}}

{{- define "fleet.poolDeployment" -}}
{{- printf "%s%s" .root.Values.workers.namePrefix (include "fleet.poolName" .pool) -}}
{{- end -}}

{{/* Environment shared by every pod: ConfigMap + Secret. */}}
{{- define "fleet.envFrom" -}}
- configMapRef:
    name: {{ include "fleet.configName" . }}
- secretRef:
    name: {{ include "fleet.secretName" . }}
{{- end -}}

{{- define "fleet.envMap" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end -}}
{{- end -}}

{{- define "fleet.podName" -}}
valueFrom:
  fieldRef:
    fieldPath: metadata.name
{{- end -}}
