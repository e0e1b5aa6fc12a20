{{/* vim: set filetype=mustache: */}}
{{- /*
Webhook mode (clusters without Initializers): which mode, which API version, names, and the serving
certificate. chart/README.md, "Which mode for which cluster", says the same in prose.
*/ -}}

{{- /*
"true" when the chart runs the webhook, else "". tproxy.useWebhook given (true/false) wins; unset
(null) means: the webhook when the cluster serves no Initializers (1.14 and later, or a 1.7-1.13
cluster without the alpha admissionregistration.k8s.io/v1alpha1) and useInitializer is not
set ("tproxy.servesInitializers" below). Both true is refused.
*/ -}}
{{- define "tproxy.useWebhook" -}}
{{- $w := .Values.tproxy.useWebhook -}}
{{- if and (eq (toString $w) "true") .Values.tproxy.useInitializer -}}
{{- fail "tproxy.useWebhook=true and tproxy.useInitializer=true exclude each other: one injects through the 1.7-1.13 Initializers (admissionregistration.k8s.io/v1alpha1), the other through a mutating admission webhook (1.9+; the choice for 1.14+). Set only one, or neither to let the chart choose from the cluster's APIs." -}}
{{- end -}}
{{- if kindIs "invalid" $w -}}
{{- if not (or .Values.tproxy.useInitializer (include "tproxy.servesInitializers" .)) -}}true{{- end -}}
{{- else if eq (toString $w) "true" -}}true
{{- end -}}
{{- end -}}

{{- /*
"true" when the cluster serves the Initializers API: admissionregistration.k8s.io/v1alpha1 with the
InitializerConfiguration kind (a live server's discovery lists kinds), or v1alpha1 at all before 1.14
(`helm template --api-versions admissionregistration.k8s.io/v1alpha1 --kube-version 1.13.0`). From 1.26
v1alpha1 is served again for other kinds (ValidatingAdmissionPolicy, when enabled), and Helm's own
default API list (helm template without a cluster) contains it: neither means Initializers.
*/ -}}
{{- define "tproxy.servesInitializers" -}}
{{- $api := "admissionregistration.k8s.io/v1alpha1" -}}
{{- if or (.Capabilities.APIVersions.Has (printf "%s/InitializerConfiguration" $api)) (and (.Capabilities.APIVersions.Has $api) (semverCompare "<1.14-0" .Capabilities.KubeVersion.Version)) -}}true{{- end -}}
{{- end -}}

{{- /*
The MutatingWebhookConfiguration's version: v1 from 1.16 (v1beta1 is gone in 1.22), v1beta1 on
1.9-1.15. As in _versions.tpl, both the version and the served API list are consulted.
*/ -}}
{{- define "tproxy.webhookApiVersion" -}}
{{- $v := .Capabilities.KubeVersion.Version -}}
{{- if and (semverCompare ">=1.16-0" $v) (.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1") -}}
admissionregistration.k8s.io/v1
{{- else if and (semverCompare ">=1.9-0 <1.22-0" $v) (.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1beta1") -}}
admissionregistration.k8s.io/v1beta1
{{- else -}}
{{- fail (printf "tproxy webhook mode needs admissionregistration.k8s.io/v1 (Kubernetes 1.16+) or v1beta1 (1.9-1.21); this cluster (%s) serves neither. On 1.7-1.13 with Initializers use tproxy.useInitializer=true; otherwise tproxy.useWebhook=false (manual init container)." $v) -}}
{{- end -}}
{{- end -}}

{{/* Object names: the webhook's Service (also the certificate's DNS name) and its TLS Secret. */}}
{{- define "tproxy.webhookName" -}}{{ include "tproxy.fullname" . | trunc 55 | trimSuffix "-" }}-webhook{{- end -}}
{{- define "tproxy.webhookTlsName" -}}{{ include "tproxy.fullname" . | trunc 51 | trimSuffix "-" }}-webhook-tls{{- end -}}
{{- define "tproxy.webhookHost" -}}{{ include "tproxy.webhookName" . }}.{{ .Values.tproxy.initializer.namespace }}.svc{{- end -}}

{{/* Namespaces the API server never sends to the webhook, as JSON {"items": [...]}: the release
     namespace (the DaemonSet), kube-system (the control plane), the webhook's own namespace and
     tproxy.initializer.excludeNamespaces; sorted, without duplicates. */}}
{{- define "tproxy.webhookExcludedNamespaces" -}}
{{- $seen := dict .Release.Namespace true "kube-system" true .Values.tproxy.initializer.namespace true -}}
{{- range .Values.tproxy.initializer.excludeNamespaces -}}{{- if . -}}{{- $_ := set $seen . true -}}{{- end -}}{{- end -}}
{{- dict "items" (keys $seen | sortAlpha) | toJson -}}
{{- end -}}

{{- /*
The serving certificate, computed once per render (cached in .Values like "tproxy.ca"). Returns JSON
{"ca": CA certificate (the caBundle), "cert": serving certificate, "key": its key, "source": ...}.
Kept across `helm upgrade`: the Secret this release made is read back with `lookup` and used as long
as it holds all three and was issued for the same Service host (annotation tproxy/webhook-host).
Otherwise (install; `helm template` without --dry-run=server, where lookup returns nothing; a renamed
release or namespace) a new CA (genCA) and a serving certificate for <svc>.<ns>.svc signed by it
(genSignedCert) are generated.
*/ -}}
{{- define "tproxy.webhookCert" -}}
{{- if not (hasKey .Values.tproxy "_webhookCertCache") -}}
{{- $host := include "tproxy.webhookHost" . -}}
{{- $existing := dict -}}
{{- /* Helm 2 (Tiller) has no `lookup` and would refuse to parse it: reached through `tpl` only under Helm 3 */ -}}
{{- if eq .Release.Service "Helm" -}}
{{- $existing = tpl (printf "{{ lookup \"v1\" \"Secret\" %q %q | default dict | toJson }}" .Values.tproxy.initializer.namespace (include "tproxy.webhookTlsName" .)) . | fromJson -}}
{{- end -}}
{{- $data := $existing.data | default dict -}}
{{- $annotations := ($existing.metadata | default dict).annotations | default dict -}}
{{- $result := dict -}}
{{- if and (hasKey $data "ca.crt") (hasKey $data "tls.crt") (hasKey $data "tls.key") (eq (index $annotations "tproxy/webhook-host" | default "") $host) -}}
{{- $result = dict "ca" (index $data "ca.crt" | b64dec) "cert" (index $data "tls.crt" | b64dec) "key" (index $data "tls.key" | b64dec) "source" "existing-secret" -}}
{{- else -}}
{{- $days := int .Values.tproxy.webhook.certValidityDays -}}
{{- $ca := genCA (printf "%s webhook CA" (include "tproxy.fullname" .)) $days -}}
{{- $svc := include "tproxy.webhookName" . -}}
{{- $ns := .Values.tproxy.initializer.namespace -}}
{{- $sans := list $svc (printf "%s.%s" $svc $ns) $host (printf "%s.cluster.local" $host) -}}
{{- $cert := genSignedCert $host nil $sans $days $ca -}}
{{- $result = dict "ca" $ca.Cert "cert" $cert.Cert "key" $cert.Key "source" "generated" -}}
{{- end -}}
{{- $_ := set .Values.tproxy "_webhookCertCache" $result -}}
{{- end -}}
{{- toJson .Values.tproxy._webhookCertCache -}}
{{- end -}}
