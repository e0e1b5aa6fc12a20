{{/* vim: set filetype=mustache: */}}
{{- /*
The API versions a cluster's users expect: apps/v1 workloads from 1.9 (GA there, and what a 1.13
cluster's users write), rbac.authorization.k8s.io/v1 from 1.8; 1.7 keeps extensions/v1beta1 and
rbac v1beta1, the versions it serves. Both the version and the served API list are consulted, so
`helm template --kube-version 1.7.16` and a render against a live 1.7 server (whose discovery has no
apps/v1) agree.
*/ -}}
{{- define "tproxy.workloadsApiVersion" -}}
{{- if and (semverCompare ">=1.9-0" .Capabilities.KubeVersion.Version) (.Capabilities.APIVersions.Has "apps/v1") -}}
apps/v1
{{- else -}}
extensions/v1beta1
{{- end -}}
{{- end -}}

{{- define "tproxy.rbacApiVersion" -}}
{{- if and (semverCompare ">=1.8-0" .Capabilities.KubeVersion.Version) (.Capabilities.APIVersions.Has "rbac.authorization.k8s.io/v1") -}}
rbac.authorization.k8s.io/v1
{{- else -}}
rbac.authorization.k8s.io/v1beta1
{{- end -}}
{{- end -}}
