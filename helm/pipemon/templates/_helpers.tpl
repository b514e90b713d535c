{{/* Names and labels. */}}
{{- define "pipemon.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pipemon.fullname" -}}
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

{{- define "pipemon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pipemon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pipemon.labels" -}}
{{ include "pipemon.selectorLabels" . }}
{{ include "pipemon.commonLabels" . }}
{{- end }}

{{/* The labels of every object of the release, besides its selector labels. */}}
{{- define "pipemon.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pipemon
{{- end }}

{{- define "pipemon.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pipemon.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pipemon.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The pipemon config file: the ConfigMap's data and the pods' checksum annotation. */}}
{{- define "pipemon.configYaml" -}}
{{- toYaml .Values.config }}
{{- end }}

{{/*
The link bases, as JSON {"runbookUrl": ..., "grafanaUrl": ...}: those of
rules/settings/links.yml (the one place they are set, read through files/rules) with the non-empty values of links.* over them, and
"{version}" replaced by the chart's appVersion, as tools/render_rules.py does with VERSION.
*/}}
{{- define "pipemon.links" -}}
{{- $defaults := .Files.Get "files/rules/settings/links.yml" | fromYaml }}
{{- if or (not $defaults) (hasKey $defaults "Error") }}
{{- fail "files/rules/settings/links.yml: missing or not valid YAML (files/rules is a link to the repository's rules/)" }}
{{- end }}
{{- $links := dict }}
{{- range $key := list "runbookUrl" "grafanaUrl" }}
{{- $value := index $.Values.links $key | default (index $defaults $key) | toString | replace "{version}" $.Chart.AppVersion }}
{{- if not (regexMatch `^https?://\S*/$` $value) }}
{{- fail (printf "links.%s = %q must be an http(s) URL ending with \"/\" (no spaces)" $key $value) }}
{{- end }}
{{- $_ := set $links $key $value }}
{{- end }}
{{- toJson $links }}
{{- end }}

{{/*
A file of files/ (rules/, dashboards/) with the literal link prefixes of the repository replaced by
the bases of "pipemon.links", as tools/render_rules.py and tools/make_bundle.py do.
Argument: (dict "root" $ "path" $path).
*/}}
{{- define "pipemon.linkedFile" -}}
{{- $links := include "pipemon.links" .root | fromJson }}
{{- $text := .root.Files.Get .path }}
{{- $text = replace "https://github.com/pipemon/pipemon/blob/main/docs/runbooks/" $links.runbookUrl $text }}
{{- $text = replace "http://grafana.example/d/" $links.grafanaUrl $text }}
{{- $text }}
{{- end }}

{{/*
A rule file as a PrometheusRule's spec: its groups, links rewritten, and the scrape job selector
of instance:pipemon_up:selected set to serviceMonitor.jobName. Argument: (dict "root" $ "path" $path).
*/}}
{{- define "pipemon.ruleSpec" -}}
{{- $text := include "pipemon.linkedFile" . }}
{{- $jobName := .root.Values.serviceMonitor.jobName }}
{{- $selector := "expr: up{job=\"pipemon\"}" }}
{{- if and .root.Values.serviceMonitor.enabled (contains "record: instance:pipemon_up:selected" $text) (not (contains $selector $text)) }}
{{- fail (printf "%s: instance:pipemon_up:selected no longer reads up{job=\"pipemon\"}, so the ServiceMonitor's job label (serviceMonitor.jobName) cannot be written into it: update the chart" .path) }}
{{- end }}
{{- $text = replace $selector (printf "expr: up{job=%s}" ($jobName | toJson)) $text }}
{{- $rules := $text | fromYaml }}
{{- if hasKey $rules "Error" }}
{{- fail (printf "%s: not valid YAML: %s" .path $rules.Error) }}
{{- end }}
{{- if not $rules.groups }}
{{- fail (printf "%s: no rule groups" .path) }}
{{- end }}
{{- toYaml (dict "groups" $rules.groups) }}
{{- end }}

{{/*
alertmanager.settings checked against alertmanager/values.yaml: every key must exist there and
keep its shape (a mapping stays a mapping, a value stays a single value).
Argument: (dict "over" <settings> "base" <defaults> "prefix" "alertmanager.settings").
*/}}
{{- define "pipemon.checkAlertmanagerSettings" -}}
{{- $base := .base }}
{{- $prefix := .prefix }}
{{- range $key, $value := .over }}
{{- $path := printf "%s.%s" $prefix $key }}
{{- if not (hasKey $base $key) }}
{{- fail (printf "%s: unknown key (alertmanager/values.yaml has no %q)" $path $key) }}
{{- end }}
{{- $default := index $base $key }}
{{- if kindIs "map" $default }}
{{- if not (kindIs "map" $value) }}
{{- fail (printf "%s: must be a mapping" $path) }}
{{- end }}
{{- include "pipemon.checkAlertmanagerSettings" (dict "over" $value "base" $default "prefix" $path) }}
{{- else if kindIs "slice" $default }}
{{- if not (kindIs "slice" $value) }}
{{- fail (printf "%s: must be a list" $path) }}
{{- end }}
{{- else if or (kindIs "map" $value) (kindIs "slice" $value) (kindIs "invalid" $value) }}
{{- fail (printf "%s: must be a single value" $path) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Flattens a mapping into .out: "a.b.c" -> value. Argument: (dict "map" <m> "prefix" "" "out" <dict>).
*/}}
{{- define "pipemon.flatten" -}}
{{- $out := .out }}
{{- $prefix := .prefix }}
{{- range $key, $value := .map }}
{{- $path := ternary $key (printf "%s.%s" $prefix $key) (eq $prefix "") }}
{{- if kindIs "map" $value }}
{{- include "pipemon.flatten" (dict "map" $value "prefix" $path "out" $out) }}
{{- else }}
{{- $_ := set $out $path $value }}
{{- end }}
{{- end }}
{{- end }}

{{/*
alertmanager/alertmanager.yml.in rendered with alertmanager/values.yaml and the overrides of
alertmanager.settings, by the rules of tools/render_alertmanager.py: a placeholder that is a whole
YAML value becomes a JSON scalar; inside a longer value it must be a plain path or URL.
*/}}
{{- define "pipemon.alertmanagerConfig" -}}
{{- $defaults := .Files.Get "files/alertmanager/values.yaml" | fromYaml }}
{{- if or (not $defaults) (hasKey $defaults "Error") }}
{{- fail "files/alertmanager/values.yaml: missing or not valid YAML" }}
{{- end }}
{{- $settings := .Values.alertmanager.settings | default dict }}
{{- include "pipemon.checkAlertmanagerSettings" (dict "over" $settings "base" $defaults "prefix" "alertmanager.settings") }}
{{- $values := mergeOverwrite (deepCopy $defaults) (deepCopy $settings) }}
{{- /* the chart's own relay, unless relay.url names another */}}
{{- if and .Values.relay.enabled (not (trim (toString ($values.relay.url | default "")))) }}
{{- $_ := set $values.relay "url" (include "pipemon.relayWebhook" .) }}
{{- end }}
{{- $flat := dict }}
{{- include "pipemon.flatten" (dict "map" $values "prefix" "" "out" $flat) }}
{{- $text := .Files.Get "files/alertmanager/alertmanager.yml.in" }}
{{- if not $text }}
{{- fail "files/alertmanager/alertmanager.yml.in: missing" }}
{{- end }}
{{- /* the relay's route and receiver (lines marked #relay#) only when relay.url is set */}}
{{- if trim (toString (index $flat "relay.url" | default "")) }}
{{- $text = regexReplaceAll `(?m)^#relay#` $text "" }}
{{- else }}
{{- $text = regexReplaceAll `(?m)^#relay#.*\n` $text "" }}
{{- end }}
{{- /* the sources' constant labels extend lists of label names: ", env, team" */}}
{{- $constant := "" }}
{{- range $label := index $flat "constant_labels" | default list }}
{{- if not (regexMatch `^[a-zA-Z_][a-zA-Z0-9_]*$` (toString $label)) }}
{{- fail (printf "alertmanager.settings.constant_labels: %q is not a label name" (toString $label)) }}
{{- end }}
{{- $constant = printf "%s, %s" $constant $label }}
{{- end }}
{{- $text = replace "${constant_labels}" $constant $text }}
{{- $_ := unset $flat "constant_labels" }}
{{- range $key := keys $flat | sortAlpha }}
{{- $value := index $flat $key }}
{{- $placeholder := printf "${%s}" $key }}
{{- if contains $placeholder $text }}
{{- if contains "${" (toString $value) }}
{{- fail (printf "alertmanager.settings.%s: must not contain \"${\"" $key) }}
{{- end }}
{{- $whole := printf `(?m)((?::|-)[ \t]+)\$\{%s\}[ \t]*$` (regexQuoteMeta $key) }}
{{- $text = regexReplaceAll $whole $text (printf "${1}%s" (replace "$" "$$" (toJson $value))) }}
{{- if contains $placeholder $text }}
{{- if not (regexMatch `^[A-Za-z0-9_./:@%+~=-]*$` (toString $value)) }}
{{- fail (printf "alertmanager.settings.%s = %q is used inside a longer value and must be a plain path or URL (no spaces or quotes)" $key (toString $value)) }}
{{- end }}
{{- $text = replace $placeholder (toString $value) $text }}
{{- end }}
{{- end }}
{{- end }}
{{- $left := regexFind `\$\{[A-Za-z_][A-Za-z0-9_.]*\}` $text }}
{{- if $left }}
{{- fail (printf "alertmanager/alertmanager.yml.in: placeholder %s has no value in alertmanager/values.yaml" $left) }}
{{- end }}
{{- $parsed := $text | fromYaml }}
{{- if hasKey $parsed "Error" }}
{{- fail (printf "the rendered Alertmanager configuration is not valid YAML: %s" $parsed.Error) }}
{{- end }}
{{- printf "# Rendered by the pipemon Helm chart from alertmanager/alertmanager.yml.in and alertmanager/values.yaml.\n" }}
{{- $text }}
{{- end }}

{{/* pipemon relay (relay.enabled): its own name and selector, so that the exporter's Service,
PodDisruptionBudget and NetworkPolicy never select the relay's pods. */}}
{{- define "pipemon.relayName" -}}
{{- printf "%s-relay" (include "pipemon.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{- define "pipemon.relaySelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-relay" (include "pipemon.name" . | trunc 57 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pipemon.relayLabels" -}}
{{ include "pipemon.relaySelectorLabels" . }}
app.kubernetes.io/component: relay
{{ include "pipemon.commonLabels" . }}
{{- end }}

{{/* The relay's webhook URL inside the cluster (Alertmanager's relay.url when it is not set). */}}
{{- define "pipemon.relayWebhook" -}}
{{- printf "http://%s.%s.svc:%d/webhook" (include "pipemon.relayName" .) .Release.Namespace (int .Values.relay.port) }}
{{- end }}
