{{/* vim: set filetype=mustache: */}}
{{/* Chart name, overridable. */}}
{{- define "tproxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-<name>", truncated to 63 characters (DNS label limit), as in the original chart. */}}
{{- define "tproxy.fullname" -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels shared by every object; call with (dict "root" $ "component" "x"). */}}
{{- define "tproxy.labels" -}}
app: {{ include "tproxy.name" .root }}
chart: {{ .root.Chart.Name }}-{{ .root.Chart.Version | replace "+" "_" }}
release: {{ .root.Release.Name }}
heritage: {{ .root.Release.Service }}
component: {{ .component }}
{{- end -}}

{{/* The annotation a deployment carries to opt in, and the initializer's name (>= 3 segments). */}}
{{- define "tproxy.annotation" -}}initializer.kubernetes.io/tproxy{{- end -}}
{{- define "tproxy.initializerName" -}}tproxy.initializer.kubernetes.io{{- end -}}

{{/* Object names. */}}
{{- define "tproxy.initializerFullname" -}}{{ include "tproxy.fullname" . | trunc 51 | trimSuffix "-" }}-initializer{{- end -}}
{{- define "tproxy.rootCertsName" -}}{{ include "tproxy.fullname" . | trunc 52 | trimSuffix "-" }}-root-certs{{- end -}}
{{- define "tproxy.certsName" -}}{{ include "tproxy.fullname" . | trunc 57 | trimSuffix "-" }}-certs{{- end -}}
{{- define "tproxy.policyName" -}}{{ include "tproxy.fullname" . | trunc 56 | trimSuffix "-" }}-policy{{- end -}}

{{/* "<images.tproxy_registry>/<image>", or the bare image when no registry is set.
     Call with (dict "root" $ "image" .Values.images.x). */}}
{{- define "tproxy.image" -}}
{{- $registry := .root.Values.images.tproxy_registry | default "" | trimSuffix "/" -}}
{{- if $registry -}}{{ printf "%s/%s" $registry .image }}{{- else -}}{{ .image }}{{- end -}}
{{- end -}}

{{/* The proxy image: ours (with the addon); images.mitmproxy only when tproxy_proxy is emptied. */}}
{{- define "tproxy.proxyImage" -}}
{{- if .Values.images.tproxy_proxy -}}
{{ include "tproxy.image" (dict "root" . "image" .Values.images.tproxy_proxy) }}
{{- else -}}
{{ required "images.tproxy_proxy or images.mitmproxy must be set" .Values.images.mitmproxy }}
{{- end -}}
{{- end -}}

{{/* The policy file content: a mapping rendered as YAML, or a YAML string used verbatim. */}}
{{- define "tproxy.policy" -}}
{{- $d := .Values.tproxy.delegation | default dict -}}
{{- if not $d.configMap -}}
{{- if kindIs "string" .Values.tproxy.policy -}}
{{ .Values.tproxy.policy }}
{{- else -}}
{{ toYaml .Values.tproxy.policy }}
{{- end -}}
{{- else -}}
{{- /* tproxy.delegation is merged into the policy's own delegation section (the values win) */ -}}
{{- $p := dict -}}
{{- if kindIs "string" .Values.tproxy.policy -}}
{{- $p = fromYaml .Values.tproxy.policy -}}
{{- if hasKey $p "Error" -}}
{{- fail (printf "tproxy.policy is not a YAML mapping: %s" (get $p "Error")) -}}
{{- end -}}
{{- else -}}
{{- $p = deepCopy .Values.tproxy.policy -}}
{{- end -}}
{{- $ceiling := dict "modes" ($d.ceiling.modes | default (list "enforce" "report")) -}}
{{- if $d.ceiling.hosts -}}{{- $_ := set $ceiling "hosts" $d.ceiling.hosts -}}{{- end -}}
{{- if $d.ceiling.ranges -}}{{- $_ := set $ceiling "ranges" $d.ceiling.ranges -}}{{- end -}}
{{- $_ := set $p "delegation" (dict "configMap" $d.configMap "ceiling" $ceiling) -}}
{{ toYaml $p }}
{{- end -}}
{{- end -}}

{{/*
The mitmproxy CA, computed once per render and cached in .Values so that the Secret, the
root-certs ConfigMaps and the DaemonSet's checksum all see the same CA. Returns JSON:
{"pem": key+cert (mitmproxy's confdir format), "cert": the certificate, "source": "..."}.
Order of preference: --set-file values; the existing Secret of this release (Helm 3 `lookup`, so
upgrades keep the CA the pods already trust); a new CA from genCA. Helm 2 (Tiller) has no `lookup`
and would refuse to parse it, so it is only reached through `tpl` when .Release.Service is "Helm".
*/}}
{{- define "tproxy.ca" -}}
{{- if not (hasKey .Values.tproxy "_caCache") -}}
{{- $cert := .Values.tproxy.ca.cert | default "" | trim -}}
{{- $key := .Values.tproxy.ca.key | default "" | trim -}}
{{- $result := dict -}}
{{- if and $cert $key -}}
{{- if not (contains "BEGIN CERTIFICATE" $cert) -}}
{{- fail "tproxy.ca.cert must be a PEM certificate (-----BEGIN CERTIFICATE-----); pass it with --set-file tproxy.ca.cert=ca.crt" -}}
{{- end -}}
{{- if not (regexMatch "BEGIN [A-Z ]*PRIVATE KEY" $key) -}}
{{- fail "tproxy.ca.key must be an unencrypted PEM private key (-----BEGIN ... PRIVATE KEY-----); pass it with --set-file tproxy.ca.key=ca.key" -}}
{{- end -}}
{{- $result = dict "pem" (printf "%s\n%s\n" $key $cert) "cert" (printf "%s\n" $cert) "source" "values" -}}
{{- else if or $cert $key -}}
{{- fail "tproxy.ca.cert and tproxy.ca.key must be given together: --set-file tproxy.ca.cert=ca.crt,tproxy.ca.key=ca.key" -}}
{{- else -}}
{{- $existing := dict -}}
{{- if eq .Release.Service "Helm" -}}
{{- $existing = tpl (printf "{{ (lookup \"v1\" \"Secret\" %q %q).data | default dict | toJson }}" .Release.Namespace (include "tproxy.certsName" .)) . | fromJson -}}
{{- end -}}
{{- if and (hasKey $existing "mitmproxy-ca.pem") (hasKey $existing "mitmproxy-ca-cert.pem") -}}
{{- $result = dict "pem" (index $existing "mitmproxy-ca.pem" | b64dec) "cert" (index $existing "mitmproxy-ca-cert.pem" | b64dec) "source" "existing-secret" -}}
{{- else -}}
{{- $ca := genCA (printf "%s mitmproxy CA" (include "tproxy.fullname" .)) 3650 -}}
{{- $result = dict "pem" (printf "%s%s" $ca.Key $ca.Cert) "cert" $ca.Cert "source" "generated" -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values.tproxy "_caCache" $result -}}
{{- end -}}
{{- toJson .Values.tproxy._caCache -}}
{{- end -}}

{{/* The bundle injected pods trust: the mitmproxy CA (+ tproxy.ca.extraTrustedCerts). */}}
{{- define "tproxy.rootCerts" -}}
{{- $ca := include "tproxy.ca" . | fromJson -}}
{{- $ca.cert | trim }}
{{- with .Values.tproxy.ca.extraTrustedCerts }}
{{ . | trim }}
{{- end }}
{{ end -}}

{{/*
The egress-lock init container, exactly as the initializer injects it and as NOTES.txt prints
it for manual mode. NODE_NAME only with the standard-mode proxy (as in the original): the sidecar
then lets the pod reach <node>:1080, and nothing listens there otherwise.
*/}}
{{- define "tproxy.sidecarContainer" -}}
name: tproxy
image: {{ include "tproxy.image" (dict "root" . "image" .Values.images.tproxy_sidecar) }}
imagePullPolicy: {{ .Values.images.pullPolicy }}
securityContext:
  privileged: true
env:
{{- if .Values.tproxy.blockSvcCIDR }}
  - name: BLOCK_SVC_CIDR
    value: {{ .Values.tproxy.blockSvcCIDR | quote }}
{{- end }}
{{- if .Values.tproxy.allowDNS }}
  - name: ALLOW_DNS
    value: {{ .Values.tproxy.allowDNS | quote }}
{{- end }}
{{- if .Values.tproxy.addStandardModeProxy }}
  - name: NODE_NAME
    valueFrom:
      fieldRef:
        fieldPath: spec.nodeName
{{- end }}
  - name: TPROXY_VERIFY_TIMEOUT
    value: {{ .Values.tproxy.verifyTimeout | toString | quote }}
{{- if ne .Values.tproxy.iptablesBackend "auto" }}
  - name: TPROXY_IPTABLES_BACKEND
    value: {{ .Values.tproxy.iptablesBackend | quote }}
{{- end }}
resources:
  limits:
    cpu: 500m
    memory: 128Mi
  requests:
    cpu: 100m
    memory: 64Mi
{{- end -}}

{{/* The CA bundle volumes (original names and paths: Fedora/RHEL/CentOS and Debian/Ubuntu). */}}
{{- define "tproxy.caVolumes" -}}
- name: ca-certs-fedora
  configMap:
    name: {{ include "tproxy.rootCertsName" . }}
    items:
      - key: root-certs.crt
        path: ca-bundle.crt
- name: ca-certs-debian
  configMap:
    name: {{ include "tproxy.rootCertsName" . }}
    items:
      - key: root-certs.crt
        path: ca-certificates.crt
{{- end -}}

{{- define "tproxy.caVolumeMounts" -}}
- name: ca-certs-fedora
  mountPath: /etc/pki/tls/certs/
  readOnly: true
- name: ca-certs-debian
  mountPath: /etc/ssl/certs/
  readOnly: true
# In the extra/ directory the CA survives an update-ca-certificates run after start.
- name: ca-certs-debian
  mountPath: /usr/local/share/ca-certificates/extra/
  readOnly: true
{{- end -}}

{{/* Env for every app container when the standard-mode proxy runs (original). */}}
{{- define "tproxy.proxyEnvVars" -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: http_proxy
  value: $(NODE_NAME):1080
- name: https_proxy
  value: $(NODE_NAME):1080
{{- end -}}

{{/* The proxy's options shared by the transparent and the standard-mode instance. The addon changes
     no mitmproxy option itself and refuses to start without connection_strategy=lazy. */}}
{{- define "tproxy.proxyOptions" -}}
- -s
- /opt/tproxy/proxy/addon.py
- --set
- confdir=/etc/tproxy/mitmproxy
- --set
- tproxy_policy=/etc/tproxy/policy/policy.yaml
- --set
- tproxy_identity=/var/run/tproxy/identity.json
- --set
- connection_strategy=lazy
- --set
- stream_large_bodies=1m
- --set
- flow_detail=0
- --set
- termlog_verbosity=error
{{- end -}}

{{/* Mounts of both proxy containers: CA (read-only confdir), policy, podwatch's identity map. */}}
{{- define "tproxy.proxyMounts" -}}
- name: mitmproxy-certs
  mountPath: /etc/tproxy/mitmproxy
  readOnly: true
- name: policy
  mountPath: /etc/tproxy/policy
  readOnly: true
- name: identity
  mountPath: /var/run/tproxy
  readOnly: true
{{- end -}}

{{/* The namespaces that get the root-certs ConfigMap, as JSON {"items": [...]}: the release
     namespace first, then tproxy.rootCertsNamespaces sorted, without duplicates or empties.
     (Only functions that Helm 2's Sprig also has: no concat/uniq/has.) */}}
{{- define "tproxy.rootCertsNamespaces" -}}
{{- $seen := dict -}}
{{- range .Values.tproxy.rootCertsNamespaces -}}
{{- if and . (ne . $.Release.Namespace) -}}{{- $_ := set $seen . true -}}{{- end -}}
{{- end -}}
{{- $items := list .Release.Namespace -}}
{{- range keys $seen | sortAlpha -}}{{- $items = append $items . -}}{{- end -}}
{{- dict "items" $items | toJson -}}
{{- end -}}

{{/* securityContext of the containers that need no privilege (proxies, initializer). */}}
{{- define "tproxy.unprivileged" -}}
{{- if .Values.tproxy.runAsUser -}}
runAsUser: {{ .Values.tproxy.runAsUser }}
runAsNonRoot: true
{{ end -}}
{{- /* a 1.8 field: a 1.7 server's validation (kubectl --validate, Tiller) refuses it */ -}}
{{- if semverCompare ">=1.8-0" .Capabilities.KubeVersion.Version }}
allowPrivilegeEscalation: false
{{- end -}}
{{- end -}}
