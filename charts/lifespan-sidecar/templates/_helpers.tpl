{{/*
Names and labels.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "lifespan-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified app name: release-chart, shortened to the release name when it already
contains the chart name. 63 characters at most: some Kubernetes name fields are DNS labels.
*/}}
{{- define "lifespan-sidecar.fullname" -}}
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

{{/* chart-version, as the helm.sh/chart label wants it. */}}
{{- define "lifespan-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The standard labels on every object. */}}
{{- define "lifespan-sidecar.labels" -}}
helm.sh/chart: {{ include "lifespan-sidecar.chart" . }}
{{ include "lifespan-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.partOf }}
app.kubernetes.io/part-of: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Selector labels: name and instance only. A Deployment's selector is immutable, so nothing
that changes between releases (version, chart) may appear here.
*/}}
{{- define "lifespan-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lifespan-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of the `helm test` pod. Its name differs from the app's, so no selector of the release
(Services, PodDisruptionBudget, topology spread) counts it as one of the app's pods.
*/}}
{{- define "lifespan-sidecar.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "lifespan-sidecar.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "lifespan-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lifespan-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The container image: a digest wins over a tag; the tag defaults to the appVersion. */}}
{{- define "lifespan-sidecar.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The sidecar configuration.

`config` in the values mirrors the sidecar's YAML file and is rendered as it is into the
ConfigMap. The numbers the pod spec depends on (ports, timeouts) are read back from it here;
a key that is absent (or set to null) falls back to the sidecar's own default, so the chart
and the process always agree on the effective value. `dig` keeps an explicit 0, where
`default` would replace it.
*/}}

{{/* The sidecar YAML file, exactly as mounted at /etc/sidecar/sidecar.yaml. */}}
{{- define "lifespan-sidecar.configYaml" -}}
{{- toYaml .Values.config }}
{{- end }}

{{/* A number from the config: (list $ "section" "key" default). */}}
{{- define "lifespan-sidecar.configValue" -}}
{{- $root := index . 0 }}
{{- $config := $root.Values.config | default dict }}
{{- $section := index . 1 }}
{{- $body := get $config $section | default dict }}
{{- dig (index . 2) (index . 3) $body }}
{{- end }}

{{- define "lifespan-sidecar.appPort" -}}
{{- include "lifespan-sidecar.configValue" (list . "server" "port" 8000) | int }}
{{- end }}

{{- define "lifespan-sidecar.adminPort" -}}
{{- include "lifespan-sidecar.configValue" (list . "admin" "port" 8081) | int }}
{{- end }}

{{/*
The worst-case time from SIGTERM (or the preStop call) to exit, in whole seconds:
the drain delay (keep serving while endpoints update), the graceful timeout (in-flight
requests finish), the lifespan shutdown timeout, and the failure linger (after a stop that
cut requests, the admin port stays up that long to be scraped). A preStop drain and the
drain after SIGTERM are one and the same delay, never two: the sidecar only waits for what
is left.
*/}}
{{- define "lifespan-sidecar.shutdownSeconds" -}}
{{- $drain := include "lifespan-sidecar.configValue" (list . "shutdown" "drain_delay" 5) | float64 }}
{{- $graceful := include "lifespan-sidecar.configValue" (list . "shutdown" "graceful_timeout" 20) | float64 }}
{{- $lifespan := include "lifespan-sidecar.configValue" (list . "lifespan" "shutdown_timeout" 30) | float64 }}
{{- $linger := include "lifespan-sidecar.configValue" (list . "lifespan" "failure_linger" 0) | float64 }}
{{- addf $drain $graceful $lifespan $linger | ceil | int }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the shutdown budget plus a margin, unless set explicitly;
an explicit value shorter than the shutdown budget would let the kubelet SIGKILL the pod in
the middle of finishing requests or of the app's lifespan shutdown, so it fails the render.
*/}}
{{- define "lifespan-sidecar.terminationGracePeriodSeconds" -}}
{{- $needed := include "lifespan-sidecar.shutdownSeconds" . | int }}
{{- $explicit := .Values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $explicit }}
{{- add $needed (.Values.terminationGracePeriodMarginSeconds | int) }}
{{- else if lt ($explicit | int) $needed }}
{{- fail (printf "terminationGracePeriodSeconds=%d is too short: the sidecar may need %ds to stop (config.shutdown.drain_delay %v + config.shutdown.graceful_timeout %v + config.lifespan.shutdown_timeout %v + config.lifespan.failure_linger %v, rounded up). Set it to at least %d (leave it unset to get %d, with the %ds margin), or lower those timeouts in config." ($explicit | int) $needed (include "lifespan-sidecar.configValue" (list . "shutdown" "drain_delay" 5)) (include "lifespan-sidecar.configValue" (list . "shutdown" "graceful_timeout" 20)) (include "lifespan-sidecar.configValue" (list . "lifespan" "shutdown_timeout" 30)) (include "lifespan-sidecar.configValue" (list . "lifespan" "failure_linger" 0)) $needed (add $needed (.Values.terminationGracePeriodMarginSeconds | int)) (.Values.terminationGracePeriodMarginSeconds | int)) }}
{{- else }}
{{- $explicit | int }}
{{- end }}
{{- end }}

{{/*
The longest a startup may take, in whole seconds: every lifespan startup attempt at its
full timeout, the backoff between attempts (bounded by retry_backoff_max), the failure
linger after the last one failed, and a margin for the interpreter start and the app
import, which no sidecar timeout covers. The startup probe must allow at least this much,
so that a failed start ends with the sidecar's own exit code 3 and message (and its
metrics scraped) rather than a kubelet kill.
*/}}
{{- define "lifespan-sidecar.startupSeconds" -}}
{{- $timeout := include "lifespan-sidecar.configValue" (list . "lifespan" "startup_timeout" 60) | float64 }}
{{- $attempts := include "lifespan-sidecar.configValue" (list . "lifespan" "startup_attempts" 1) | int }}
{{- $backoffMax := include "lifespan-sidecar.configValue" (list . "lifespan" "retry_backoff_max" 30) | float64 }}
{{- $linger := include "lifespan-sidecar.configValue" (list . "lifespan" "failure_linger" 0) | float64 }}
{{- $total := addf (mulf $timeout $attempts) (mulf $backoffMax (sub $attempts 1)) $linger }}
{{- addf $total .Values.probes.startup.marginSeconds | ceil | int }}
{{- end }}

{{/* The startup probe's failureThreshold: computed to cover startupSeconds, or checked. */}}
{{- define "lifespan-sidecar.startupFailureThreshold" -}}
{{- $needed := include "lifespan-sidecar.startupSeconds" . | int }}
{{- $period := .Values.probes.startup.periodSeconds | int }}
{{- $explicit := .Values.probes.startup.failureThreshold }}
{{- if kindIs "invalid" $explicit }}
{{- divf $needed $period | ceil | int }}
{{- else if lt (mul ($explicit | int) $period) $needed }}
{{- fail (printf "probes.startup.failureThreshold=%d x periodSeconds=%d gives the app %ds to start, less than the %ds the sidecar may take (config.lifespan.startup_timeout x startup_attempts, the retry backoff, config.lifespan.failure_linger, and a %vs margin). Raise failureThreshold to at least %d, or leave it unset to have it computed." ($explicit | int) $period (mul ($explicit | int) $period) $needed .Values.probes.startup.marginSeconds (divf $needed $period | ceil | int)) }}
{{- else }}
{{- $explicit | int }}
{{- end }}
{{- end }}

{{/*
The admin token: the Secret and key the sidecar reads SIDECAR_ADMIN_TOKEN from, either
adminAuth.existingSecret or the chart's own <fullname>-admin (templates/secret-admin.yaml).
*/}}
{{- define "lifespan-sidecar.adminSecretName" -}}
{{- if .Values.adminAuth.existingSecret }}
{{- .Values.adminAuth.existingSecret }}
{{- else }}
{{- printf "%s-admin" (include "lifespan-sidecar.fullname" .) }}
{{- end }}
{{- end }}

{{- define "lifespan-sidecar.adminSecretKey" -}}
{{- if .Values.adminAuth.existingSecret }}
{{- .Values.adminAuth.existingSecretKey }}
{{- else -}}
token
{{- end }}
{{- end }}

{{/*
Containers given in the values (initContainers, extraContainers), rendered with `tpl` so that
their strings may use the chart's templates, such as the release's own image.
*/}}
{{- define "lifespan-sidecar.userContainers" -}}
{{- $root := index . 0 }}
{{- tpl (toYaml (index . 1)) $root }}
{{- end }}

{{/*
Checks that fail the render with a message instead of producing a pod that cannot work.
Included once, from the Deployment.
*/}}
{{- define "lifespan-sidecar.validate" -}}
{{- $config := .Values.config | default dict }}
{{- $app := get $config "app" | default dict }}
{{- if not (get $app "target") }}
{{- fail "config.app.target is empty: set it to the ASGI app as module:attribute, e.g. myapp.main:app" }}
{{- end }}
{{- range $section := list "server" "admin" }}
{{- $host := dig $section "host" "0.0.0.0" $config }}
{{- if has $host (list "127.0.0.1" "localhost" "::1") }}
{{- fail (printf "config.%s.host is %q: the kubelet and the Service reach the pod on its pod IP, so bind 0.0.0.0 (or :: for IPv6)" $section $host) }}
{{- end }}
{{- end }}
{{- if eq (include "lifespan-sidecar.appPort" .) "0" }}
{{- fail "config.server.port is 0 (a random port): the Service and the pod spec need a fixed port, e.g. 8000" }}
{{- end }}
{{- if eq (include "lifespan-sidecar.adminPort" .) "0" }}
{{- fail "config.admin.port is 0 (a random port): the probes and the preStop hook need a fixed port, e.g. 8081" }}
{{- end }}
{{- if eq (include "lifespan-sidecar.appPort" .) (include "lifespan-sidecar.adminPort" .) }}
{{- fail (printf "config.server.port and config.admin.port are both %s: give the admin port its own number, e.g. 8081" (include "lifespan-sidecar.appPort" .)) }}
{{- end }}
{{- if dig "admin" "token" "" $config }}
{{- fail "config.admin.token is set: the ConfigMap would hold the token in plain text for anyone who can read ConfigMaps. Leave it out and use adminAuth (a generated Secret, adminAuth.token or adminAuth.existingSecret)" }}
{{- end }}
{{- $auth := .Values.adminAuth }}
{{- $allowFrom := dig "admin" "allow_from" "" $config | toString }}
{{- if and $allowFrom (eq $auth.preStopHook "exec") (not (regexMatch "(^|[ ,])(127\\.|::1)" $allowFrom)) }}
{{- fail (printf "config.admin.allow_from is %q but the preStop hook is exec: `sidecar prestop` runs in the container and calls /prestop over loopback, which that list refuses. Add 127.0.0.1, e.g. %q (the admin token still applies to loopback callers)" $allowFrom (printf "%s, 127.0.0.1" $allowFrom)) }}
{{- end }}
{{- if $auth.enabled }}
{{- if dig "admin" "token_file" "" $config }}
{{- fail "config.admin.token_file is set while adminAuth.enabled is true: the token from adminAuth (SIDECAR_ADMIN_TOKEN) would silently win. Use one: adminAuth, or adminAuth.enabled=false with your own Secret mounted through extraVolumes" }}
{{- end }}
{{- if and $auth.token (lt (len $auth.token) 16) }}
{{- fail (printf "adminAuth.token is %d characters long: the sidecar refuses a token shorter than 16. Generate one with `openssl rand -hex 32`, or leave adminAuth.token empty to have the chart generate one" (len $auth.token)) }}
{{- end }}
{{- if eq $auth.token "REPLACE-ME-with-a-random-token" }}
{{- fail "adminAuth.token is the placeholder of manifests/secret.yaml, which is public: the sidecar refuses it. Generate one with `openssl rand -hex 32`, or leave adminAuth.token empty to have the chart generate one" }}
{{- end }}
{{- if and $auth.token $auth.existingSecret }}
{{- fail "adminAuth.token and adminAuth.existingSecret are both set: give the token inline (the chart stores it in a Secret) or name an existing Secret, not both" }}
{{- end }}
{{- if eq $auth.preStopHook "httpGet" }}
{{- if $auth.existingSecret }}
{{- fail (printf "adminAuth.preStopHook=httpGet needs the admin token in the hook's Authorization header, but the token is in adminAuth.existingSecret %q, which the chart cannot read (the kubelet cannot take a header from a Secret). Use adminAuth.preStopHook=exec (the default: `sidecar prestop` in the container, which reads the token from its environment), or give the token inline in adminAuth.token and accept that anyone who can read the pod spec sees it" $auth.existingSecret) }}
{{- end }}
{{- if not $auth.token }}
{{- fail "adminAuth.preStopHook=httpGet needs the admin token in the hook's Authorization header, but adminAuth.token is empty and a generated token would change on every render without cluster access. Use adminAuth.preStopHook=exec (the default: `sidecar prestop` in the container, which reads the token from its environment), or set adminAuth.token and accept that anyone who can read the pod spec sees it" }}
{{- end }}
{{- end }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if hasPrefix "SIDECAR_ADMIN_TOKEN" .name }}
{{- fail (printf "extraEnv sets %s: the chart passes the admin token itself; use adminAuth (a generated Secret, adminAuth.token or adminAuth.existingSecret)" .name) }}
{{- else if hasPrefix "SIDECAR_" .name }}
{{- fail (printf "extraEnv sets %s: set the matching key under config instead; the chart derives the probes, ports and grace period from config and cannot see environment overrides" .name) }}
{{- end }}
{{- end }}
{{- if and .Values.podDisruptionBudget.minAvailable .Values.podDisruptionBudget.maxUnavailable }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both" }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (.Values.autoscaling.minReplicas | int) (.Values.autoscaling.maxReplicas | int) }}
{{- fail (printf "autoscaling.minReplicas (%d) is greater than autoscaling.maxReplicas (%d)" (.Values.autoscaling.minReplicas | int) (.Values.autoscaling.maxReplicas | int)) }}
{{- end }}
{{- if and .Values.autoscaling.targetCPUUtilizationPercentage (not (dig "requests" "cpu" "" .Values.resources)) }}
{{- fail "autoscaling.targetCPUUtilizationPercentage needs resources.requests.cpu: utilization is measured against the request" }}
{{- end }}
{{- if and .Values.autoscaling.targetMemoryUtilizationPercentage (not (dig "requests" "memory" "" .Values.resources)) }}
{{- fail "autoscaling.targetMemoryUtilizationPercentage needs resources.requests.memory: utilization is measured against the request" }}
{{- end }}
{{- if not (or .Values.autoscaling.targetCPUUtilizationPercentage .Values.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling.enabled needs a target: set autoscaling.targetCPUUtilizationPercentage or autoscaling.targetMemoryUtilizationPercentage" }}
{{- end }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled: the ServiceMonitor scrapes that Service" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled }}
{{- fail "metrics.serviceMonitor.enabled and metrics.podMonitor.enabled are both true: Prometheus would scrape every pod twice. Enable one of them" }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.hosts) }}
{{- fail "ingress.enabled needs at least one entry in ingress.hosts, e.g. [{host: app.example.com, paths: [{path: /, pathType: Prefix}]}]" }}
{{- end }}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) }}
{{- fail "httpRoute.enabled needs at least one entry in httpRoute.parentRefs: the Gateway to attach to, e.g. [{name: public, namespace: gateway-system}]" }}
{{- end }}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.rules) }}
{{- fail "httpRoute.enabled needs at least one entry in httpRoute.rules, e.g. [{matches: [{path: {type: PathPrefix, value: /}}]}]" }}
{{- end }}
{{- $names := list "sidecar" }}
{{- range concat .Values.initContainers .Values.extraContainers }}
{{- if has .name $names }}
{{- fail (printf "two containers are named %q (initContainers, extraContainers and the chart's own \"sidecar\" share one namespace): rename one" .name) }}
{{- end }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
