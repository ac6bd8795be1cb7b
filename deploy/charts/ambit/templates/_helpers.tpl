{{/*
Labels of every object of the chart.
*/}}
{{- define "ambit.labels" -}}
app.kubernetes.io/part-of: ambit
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/*
An image reference: (list $ "name") gives <hub>/<name>:<tag>, the tag
defaulting to the chart's appVersion; a name that contains "/" is taken
as a complete reference.
*/}}
{{- define "ambit.image" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- if contains "/" $name -}}
{{- $name -}}
{{- else -}}
{{- printf "%s/%s:%s" (required "hub: set the registry of Ambit's images" $root.Values.hub) $name (default $root.Chart.AppVersion $root.Values.tag) -}}
{{- end -}}
{{- end }}

{{/*
The address of istiod's TLS port (CA and xDS) as clients in the cluster
reach it; istiod's serving certificate is for this name.
*/}}
{{- define "ambit.istiodAddress" -}}
{{- printf "istiod.%s.svc:15012" .Release.Namespace -}}
{{- end }}
