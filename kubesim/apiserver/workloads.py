"""The workload kinds of 1.13 beside 1.7's: every group/version that serves Deployments, DaemonSets,
ReplicaSets, StatefulSets, Jobs, ReplicationControllers, the webhook configurations, the policy kinds
and the access reviews, with each version's defaults and conversions.

Like the real server, one *storage* holds a kind's objects whatever version created them (1.13
stores Deployments once, as ``apps/v1``, and converts on every read); each group/version is a view
of it. What differs per version, and is reproduced here (k8s.io/kubernetes release-1.13
``pkg/apis/{apps,extensions,batch}/*/defaults.go`` and ``conversion.go``):

- defaults, applied when a body is decoded in the request's version: ``apps/v1`` and
  ``apps/v1beta2`` default neither the selector nor the object's labels from the template (a
  selector is required), ``extensions/v1beta1`` Deployments default ``revisionHistoryLimit`` and
  ``progressDeadlineSeconds`` to MaxInt32 (1.9+), DaemonSets use ``RollingUpdate`` from
  ``apps/v1beta2`` on and ``OnDelete`` before, StatefulSets likewise;
- fields a version does not have: ``apps/v1``/``v1beta2`` carry a DaemonSet's
  ``spec.templateGeneration`` in the ``deprecated.daemonset.template.generation`` annotation and
  have no Deployment ``spec.rollbackTo``;
- ``spec.selector`` is immutable on update except through ``apps/v1beta1`` and
  ``extensions/v1beta1`` (the deployment/daemonset/replicaset strategies' ValidateUpdate);
- the create strategies reset ``status`` (``PrepareForCreate``): ``{}`` for Deployments and Jobs,
  the non-omitempty zero counters for the others; Jobs get the generated
  ``controller-uid`` selector.
"""

from __future__ import annotations

import copy

from . import resources as R
from .errors import FieldError

MAX_INT32 = 2147483647
TG_ANNOTATION = "deprecated.daemonset.template.generation"
ROLLBACK_ANNOTATION = "deprecated.deployment.rollback.to"
ALL = ("all",)

# What a 1.7.x API server serves of the kinds kubesim implements (no 1.7 OpenAPI schemas are bundled;
# these are 1.7's registered group/versions: rbac/v1 and apps/v1beta2 arrived in 1.8, apps/v1 in 1.9,
# SelfSubjectRulesReview in 1.8, PodSecurityPolicy in policy in 1.10, the webhook configurations in 1.9).
CORE_KINDS = (
    "Pod",
    "Service",
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "Namespace",
    "Node",
    "Event",
    "Endpoints",
    "ReplicationController",
)
GVKS_1_7 = frozenset(
    [("", "v1", k) for k in CORE_KINDS]
    + [
        ("apps", "v1beta1", "Deployment"),
        ("apps", "v1beta1", "StatefulSet"),
        ("extensions", "v1beta1", "Deployment"),
        ("extensions", "v1beta1", "DaemonSet"),
        ("extensions", "v1beta1", "ReplicaSet"),
        ("extensions", "v1beta1", "PodSecurityPolicy"),
        ("batch", "v1", "Job"),
        ("policy", "v1beta1", "PodDisruptionBudget"),
        ("admissionregistration.k8s.io", "v1alpha1", "InitializerConfiguration"),
    ]
    + [("rbac.authorization.k8s.io", "v1beta1", k) for k in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    + [
        ("authorization.k8s.io", v, k)
        for v in ("v1", "v1beta1")
        for k in ("SelfSubjectAccessReview", "SubjectAccessReview", "LocalSubjectAccessReview")
    ]
)


# ---- defaults ------------------------------------------------------------------------------


def _labels_from_template(obj: dict, spec: dict, selector: bool = True) -> None:
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels")
    if labels:
        if selector and spec.get("selector") is None:
            spec["selector"] = {"matchLabels": dict(labels)}
        if not obj["metadata"].get("labels"):
            obj["metadata"]["labels"] = dict(labels)


def default_deployment_v1(obj: dict) -> None:
    """apps/v1 and apps/v1beta2 (1.13): no selector or label defaulting."""
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    R._default_rolling_update(spec, "25%", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    R._default_template(spec)


def default_deployment_extensions_113(obj: dict) -> None:
    """extensions/v1beta1 in 1.9+: as 1.7, plus MaxInt32 (= unset) history and deadline."""
    R.default_deployment_extensions(obj)
    obj["spec"].setdefault("revisionHistoryLimit", MAX_INT32)
    obj["spec"].setdefault("progressDeadlineSeconds", MAX_INT32)


def default_daemonset_v1(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    us = spec.setdefault("updateStrategy", {})
    us.setdefault("type", "RollingUpdate")
    if us["type"] == "RollingUpdate":
        us.setdefault("rollingUpdate", {}).setdefault("maxUnavailable", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    R._default_template(spec)


def default_daemonset_extensions_113(obj: dict) -> None:
    """extensions/v1beta1 in 1.13: templateGeneration is the create strategy's, not a default."""
    spec = obj.setdefault("spec", {})
    had = "templateGeneration" in spec
    R.default_daemonset(obj)
    if not had:
        spec.pop("templateGeneration", None)


def default_replicaset_v1(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    R._default_template(spec)


def default_replicaset_extensions(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    _labels_from_template(obj, spec)
    default_replicaset_v1(obj)


def default_replicationcontroller(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels")
    if labels:
        if not spec.get("selector"):
            spec["selector"] = dict(labels)  # a plain map in core/v1
        if not obj["metadata"].get("labels"):
            obj["metadata"]["labels"] = dict(labels)
    spec.setdefault("replicas", 1)
    R._default_template(spec)


def default_statefulset_v1(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("podManagementPolicy", "OrderedReady")
    us = spec.setdefault("updateStrategy", {})
    if not us.get("type"):
        us["type"] = "RollingUpdate"
        us["rollingUpdate"] = {}
    if us["type"] == "RollingUpdate" and isinstance(us.get("rollingUpdate"), dict):
        us["rollingUpdate"].setdefault("partition", 0)
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    R._default_template(spec)


def default_statefulset_v1beta1(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("podManagementPolicy", "OrderedReady")
    us = spec.setdefault("updateStrategy", {})
    us.setdefault("type", "OnDelete")
    _labels_from_template(obj, spec)
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    if us["type"] == "RollingUpdate" and isinstance(us.get("rollingUpdate"), dict):
        us["rollingUpdate"].setdefault("partition", 0)
    R._default_template(spec)


def default_job(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
        spec["parallelism"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("backoffLimit", 6)
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels")
    if labels and not obj["metadata"].get("labels"):
        obj["metadata"]["labels"] = dict(labels)
    R._default_template(spec)


#: webhook fields added after 1.13 (1.14: timeoutSeconds, admissionReviewVersions, rules[].scope; 1.15:
#: objectSelector, matchPolicy, reinvocationPolicy, service.port): 1.13's decoder drops them
WEBHOOK_FIELDS_AFTER_113 = ("timeoutSeconds", "admissionReviewVersions", "objectSelector", "matchPolicy", "reinvocationPolicy")


def default_webhook_configuration(obj: dict) -> None:
    """admissionregistration.k8s.io/v1beta1 as 1.13 decodes it (the only release kubesim serves it in)."""
    for w in obj.get("webhooks") or []:
        if isinstance(w, dict):
            for key in WEBHOOK_FIELDS_AFTER_113:
                w.pop(key, None)
            for r in w.get("rules") or []:
                if isinstance(r, dict):
                    r.pop("scope", None)
            svc = (w.get("clientConfig") or {}).get("service")
            if isinstance(svc, dict):
                svc.pop("port", None)
            w.setdefault("failurePolicy", "Ignore")
            w.setdefault("namespaceSelector", {})
            w.setdefault("sideEffects", "Unknown")


def default_webhook_configuration_v1(obj: dict) -> None:
    """admissionregistration.k8s.io/v1 (1.16+): fail closed, Equivalent matching, 10 s."""
    for w in obj.get("webhooks") or []:
        if isinstance(w, dict):
            w.setdefault("failurePolicy", "Fail")
            w.setdefault("matchPolicy", "Equivalent")
            w.setdefault("namespaceSelector", {})
            w.setdefault("objectSelector", {})
            w.setdefault("timeoutSeconds", 10)
            if "reinvocationPolicy" in w or obj.get("kind") != "ValidatingWebhookConfiguration":
                w.setdefault("reinvocationPolicy", "Never")
            svc = (w.get("clientConfig") or {}).get("service")
            if isinstance(svc, dict):
                svc.setdefault("port", 443)
            for r in w.get("rules") or []:
                if isinstance(r, dict):
                    r.setdefault("scope", "*")


def default_psp(obj: dict) -> None:
    obj.setdefault("spec", {}).setdefault("allowPrivilegeEscalation", True)


# ---- conversions ---------------------------------------------------------------------------


class Conversion:
    """What a group/version shows differently from the stored object, and how its input maps back."""

    def output(self, body: dict) -> None:
        pass

    def input(self, obj: dict) -> None:
        pass


def _pop_annotation(obj: dict, key: str):
    meta = obj.get("metadata") or {}
    ann = meta.get("annotations")
    if not isinstance(ann, dict) or key not in ann:
        return None
    value = ann.pop(key)
    if not ann:
        meta.pop("annotations", None)
    return value


class DaemonSetV1(Conversion):
    """apps/v1, apps/v1beta2: templateGeneration lives in an annotation (Convert_v1_DaemonSet_To_apps_DaemonSet)."""

    def output(self, body: dict) -> None:
        spec = body.get("spec")
        if isinstance(spec, dict) and "templateGeneration" in spec:
            tg = spec.pop("templateGeneration")
            body.setdefault("metadata", {}).setdefault("annotations", {})[TG_ANNOTATION] = str(tg)

    def input(self, obj: dict) -> None:
        value = _pop_annotation(obj, TG_ANNOTATION)
        if value is not None and isinstance(obj.get("spec"), dict):
            try:
                obj["spec"]["templateGeneration"] = int(value)
            except ValueError:
                pass


class DeploymentV1(Conversion):
    """apps/v1, apps/v1beta2: no spec.rollbackTo (kept in an annotation by the real conversion)."""

    def output(self, body: dict) -> None:
        spec = body.get("spec")
        if isinstance(spec, dict) and "rollbackTo" in spec:
            import json

            rb = spec.pop("rollbackTo")
            body.setdefault("metadata", {}).setdefault("annotations", {})[ROLLBACK_ANNOTATION] = json.dumps(
                rb, separators=(",", ":")
            )

    def input(self, obj: dict) -> None:
        _pop_annotation(obj, ROLLBACK_ANNOTATION)


# ---- create strategies, update validation --------------------------------------------------

INITIAL_STATUS = {
    "deployments": {},
    "jobs": {},
    "daemonsets": {"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 0},
    "replicasets": {"replicas": 0},
    "statefulsets": {"replicas": 0},
    "replicationcontrollers": {"replicas": 0},
    "poddisruptionbudgets": {"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0},
    "services": {"loadBalancer": {}},  # ServiceStatus.LoadBalancer is a struct: always written
}


def prepare_create(rt, obj: dict, k8s_version: str = "1.13") -> None:
    """The create strategy after the system fields (uid) are set: status reset, DaemonSet
    templateGeneration 1, and a Job's generated selector (jobStrategy.Validate's generateSelector)."""
    if rt.storage in INITIAL_STATUS:
        obj["status"] = copy.deepcopy(INITIAL_STATUS[rt.storage])
        if rt.storage == "poddisruptionbudgets" and k8s_version == "1.7":
            obj["status"]["disruptedPods"] = None  # not omitempty in 1.7 (required in the 1.8 schema)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if rt.storage == "daemonsets":
        spec["templateGeneration"] = 1 if not isinstance(spec.get("templateGeneration"), int) else spec["templateGeneration"] or 1
    if rt.storage == "jobs" and not spec.get("manualSelector"):
        uid = obj["metadata"]["uid"]
        tmpl = spec.setdefault("template", {})
        tmeta = tmpl.setdefault("metadata", {})
        labels = tmeta.get("labels") if isinstance(tmeta.get("labels"), dict) else {}
        labels.update({"controller-uid": uid, "job-name": obj["metadata"]["name"]})
        tmeta["labels"] = labels
        spec["selector"] = {"matchLabels": {"controller-uid": uid}}
        if not obj["metadata"].get("labels"):
            # batch/v1 defaulting copies the template's labels to an unlabelled Job; a real server
            # also runs it when it decodes the stored object, after the labels above were added.
            obj["metadata"]["labels"] = dict(labels)


SELECTOR_MUTABLE = {("apps", "v1beta1"), ("extensions", "v1beta1")}


def go_label_selector(sel) -> str:
    """``%#v`` of a metav1.LabelSelector, as field.Invalid prints a dereferenced pointer."""
    if not isinstance(sel, dict):
        return "null"
    ml = sel.get("matchLabels")
    ml_s = go_string_map(ml)
    me = sel.get("matchExpressions")
    if not me:
        me_s = "[]v1.LabelSelectorRequirement(nil)"
    else:
        parts = []
        for r in me:
            vals = r.get("values")
            vs = "[]string(nil)" if vals is None else "[]string{" + ", ".join(f'"{v}"' for v in vals) + "}"
            parts.append(
                f'v1.LabelSelectorRequirement{{Key:"{r.get("key", "")}", Operator:"{r.get("operator", "")}", Values:{vs}}}'
            )
        me_s = "[]v1.LabelSelectorRequirement{" + ", ".join(parts) + "}"
    return f"v1.LabelSelector{{MatchLabels:{ml_s}, MatchExpressions:{me_s}}}"


def go_string_map(m) -> str:
    """``%#v`` of a map[string]string (Go sorts the keys)."""
    if m is None:
        return "map[string]string(nil)"
    return "map[string]string{" + ", ".join(f'"{k}":"{m[k]}"' for k in sorted(m)) + "}"


class GoRepr:
    """A value that field errors print verbatim (its Go ``%#v``)."""

    def __init__(self, text: str):
        self.go_repr = text


def validate_update(rt, new: dict, cur: dict, k8s_version: str) -> list[FieldError]:
    """1.13's deployment/daemonset/replicaset ValidateUpdate: the selector may change only through
    apps/v1beta1 and extensions/v1beta1 (the request's group/version decides)."""
    if k8s_version == "1.7" or rt.storage not in ("deployments", "daemonsets", "replicasets"):
        return []
    if (rt.group, rt.version) in SELECTOR_MUTABLE:
        return []
    old_sel = (cur.get("spec") or {}).get("selector")
    new_sel = (new.get("spec") or {}).get("selector")
    if _norm_selector(old_sel) != _norm_selector(new_sel):
        return [FieldError("Invalid", "spec.selector", "field is immutable", GoRepr(go_label_selector(new_sel)))]
    return []


def _norm_selector(sel):
    if not isinstance(sel, dict):
        return sel
    return {k: v for k, v in sel.items() if v}


# ---- the registry entries ------------------------------------------------------------------


def _rt(group, version, name, kind, namespaced, storage, **kw) -> "R.ResourceType":
    return R.ResourceType(group, version, name, kind, namespaced, storage, **kw)


def _workload(group, version, name, kind, storage, default, *, default_113=None, scale=None, short=(), convert=None, listed=()):
    return _rt(
        group,
        version,
        name,
        kind,
        True,
        storage,
        default=default,
        default_113=default_113,
        has_status=True,
        tracks_generation=True,
        pod_like="template",
        short_names=short,
        categories=ALL,
        scale=scale,
        convert=convert,
        listed_subresources=listed,
        initial_status=INITIAL_STATUS.get(storage),
    )


ROLLBACK = ("rollback", "DeploymentRollback", ("create",), None)
REVIEW_VERBS = ("create",)


def resource_types() -> list:
    """Everything besides resources.py's 1.7 core entries (which gain 1.13 defaults in place)."""
    out = []
    # Deployments: apps/v1beta1 and extensions/v1beta1 are resources.py's, amended here.
    for rt in R.RESOURCES:
        if rt.storage == "deployments":
            rt.categories = ALL
            rt.initial_status = INITIAL_STATUS["deployments"]
            rt.listed_subresources = (ROLLBACK,)
            rt.scale = (rt.group, rt.version, "Scale")
            if rt.group == "extensions":
                rt.default_113 = default_deployment_extensions_113
        elif rt.storage == "daemonsets":
            rt.categories = ALL
            rt.initial_status = INITIAL_STATUS["daemonsets"]
            rt.default_113 = default_daemonset_extensions_113
        elif rt.name in ("pods", "services"):
            rt.categories = ALL
        if rt.name in ("namespaces", "services"):
            rt.verbs = tuple(v for v in rt.verbs if v != "deletecollection")
        if rt.name == "namespaces":
            rt.listed_subresources = (("finalize", "Namespace", ("update",), None),)
        if rt.name == "events":
            rt.field_selectors = (
                "metadata.name",
                "metadata.namespace",
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "source",
                "type",
            )
    v1dep = DeploymentV1()
    v1ds = DaemonSetV1()
    for v in ("v1", "v1beta2"):
        scale = ("autoscaling", "v1", "Scale") if v == "v1" else ("apps", v, "Scale")
        out += [
            _workload(
                "apps",
                v,
                "deployments",
                "Deployment",
                "deployments",
                default_deployment_v1,
                scale=scale,
                short=("deploy",),
                convert=v1dep,
            ),
            _workload("apps", v, "daemonsets", "DaemonSet", "daemonsets", default_daemonset_v1, short=("ds",), convert=v1ds),
            _workload("apps", v, "replicasets", "ReplicaSet", "replicasets", default_replicaset_v1, scale=scale, short=("rs",)),
            _workload(
                "apps", v, "statefulsets", "StatefulSet", "statefulsets", default_statefulset_v1, scale=scale, short=("sts",)
            ),
        ]
    out += [
        _workload(
            "extensions",
            "v1beta1",
            "replicasets",
            "ReplicaSet",
            "replicasets",
            default_replicaset_extensions,
            scale=("extensions", "v1beta1", "Scale"),
            short=("rs",),
        ),
        _workload(
            "apps",
            "v1beta1",
            "statefulsets",
            "StatefulSet",
            "statefulsets",
            default_statefulset_v1beta1,
            scale=("apps", "v1beta1", "Scale"),
            short=("sts",),
        ),
        _workload(
            "",
            "v1",
            "replicationcontrollers",
            "ReplicationController",
            "replicationcontrollers",
            default_replicationcontroller,
            scale=("autoscaling", "v1", "Scale"),
            short=("rc",),
        ),
        _workload("batch", "v1", "jobs", "Job", "jobs", default_job),
    ]
    for name, kind in (
        ("mutatingwebhookconfigurations", "MutatingWebhookConfiguration"),
        ("validatingwebhookconfigurations", "ValidatingWebhookConfiguration"),
    ):
        out.append(_rt("admissionregistration.k8s.io", "v1beta1", name, kind, False, name, default=default_webhook_configuration))
        out.append(_rt("admissionregistration.k8s.io", "v1", name, kind, False, name, default=default_webhook_configuration_v1))
    out += [
        _rt(
            "policy",
            "v1beta1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            True,
            "poddisruptionbudgets",
            has_status=True,
            tracks_generation=True,
            short_names=("pdb",),
            initial_status=INITIAL_STATUS["poddisruptionbudgets"],
        ),
        _rt(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            True,
            "poddisruptionbudgets",
            has_status=True,
            tracks_generation=True,
            short_names=("pdb",),
            initial_status=INITIAL_STATUS["poddisruptionbudgets"],
        ),
        _rt(
            "policy",
            "v1beta1",
            "podsecuritypolicies",
            "PodSecurityPolicy",
            False,
            "podsecuritypolicies",
            default=default_psp,
            short_names=("psp",),
        ),
        _rt(
            "extensions",
            "v1beta1",
            "podsecuritypolicies",
            "PodSecurityPolicy",
            False,
            "podsecuritypolicies",
            default=default_psp,
            short_names=("psp",),
        ),
    ]
    for v in ("v1beta1", "v1"):  # leader election (1.13: v1beta1; 1.14+: v1)
        out.append(_rt("coordination.k8s.io", v, "leases", "Lease", True, "leases"))
    # authorization.k8s.io: create-only reviews, answered from RBAC (reviews.py), never stored.
    for v in ("v1", "v1beta1"):
        for name, kind, namespaced in (
            ("localsubjectaccessreviews", "LocalSubjectAccessReview", True),
            ("selfsubjectaccessreviews", "SelfSubjectAccessReview", False),
            ("selfsubjectrulesreviews", "SelfSubjectRulesReview", False),
            ("subjectaccessreviews", "SubjectAccessReview", False),
        ):
            out.append(_rt("authorization.k8s.io", v, name, kind, namespaced, "review:" + name, verbs=REVIEW_VERBS))
    return out


def assign_categories(registry: list) -> None:
    """``kubectl get all`` must not list a workload twice: the real storage_extensions.go and
    storage_apps.go register the older group/versions ``WithCategories(nil)`` once a newer one carries
    ``all`` (1.13: only apps/v1 and batch/v1 workloads; 1.7: extensions, plus apps/v1beta1 StatefulSets)."""
    for rt in registry:
        if rt.group == "extensions" or (rt.group == "apps" and rt.version in ("v1beta1", "v1beta2")):
            rt.no_categories_in = ("1.13",)
            if rt.group == "apps" and rt.storage == "deployments":
                rt.no_categories_in = ("1.7", "1.13")


def assign_served(registry: list) -> None:
    """Which version serves each entry: 1.13 and 1.28 from the OpenAPI-derived catalog
    (schema_catalog.py), 1.7 from GVKS_1_7. Every catalog kind must have an entry, and every entry a version."""
    from .schema_catalog import GVKS_1_13, GVKS_1_28

    have = set()
    for rt in registry:
        gvk = (rt.group, rt.version, rt.kind)
        have.add(gvk)
        rt.served = tuple(v for v, gvks in (("1.7", GVKS_1_7), ("1.13", GVKS_1_13), ("1.28", GVKS_1_28)) if gvk in gvks)
        if not rt.served:
            raise AssertionError(f"kubesim registry: {gvk} is served by no Kubernetes version")
    missing = (GVKS_1_13 | GVKS_1_7 | GVKS_1_28) - have
    if missing:
        raise AssertionError(f"kubesim registry: no entry for {sorted(missing)}")
