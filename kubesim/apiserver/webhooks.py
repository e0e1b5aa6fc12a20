"""Mutating admission webhooks, called as kube-apiserver's MutatingAdmissionWebhook plugin calls them.

On a create or update (``dryRun`` too) of an object, after defaulting and before validation, every
webhook of every ``MutatingWebhookConfiguration`` whose rules match is called in order (configurations
by name, webhooks in their order) — k8s.io/apiserver ``pkg/admission/plugin/webhook``:

- **matching**: ``rules`` (operations, apiGroups, apiVersions, resources with ``*``, ``*/*``,
  ``pods/*``, ``*/status`` subresource forms, scope), ``namespaceSelector`` (the labels of the object's
  namespace; a Namespace is matched by its own labels), ``objectSelector`` (the new or the old object's
  labels), ``matchPolicy`` — ``Exact`` or ``Equivalent``: a request through another version of the same
  storage (``extensions/v1beta1`` Deployments for an ``apps/v1`` rule) is sent converted to the version
  the rule names, and the patch is applied there;
- **calling**: HTTPS ``POST`` of an ``AdmissionReview`` in the first of ``admissionReviewVersions``
  the server speaks (1.13: ``v1beta1``; later ``v1`` and ``v1beta1``), to ``clientConfig.url`` or to
  ``clientConfig.service`` — a ready pod behind the Service (its IP in the netns topology; the API
  server's ``webhook_dialer`` opens the connection there) on the Service port's ``targetPort`` — with
  the server name ``<service>.<namespace>.svc`` verified against ``caBundle``; ``timeoutSeconds``
  (v1 default 10, v1beta1 30; 1.13 has a fixed 30 s);
- **answers**: ``response.uid`` must be the request's; ``allowed: false`` → the request fails with
  ``admission webhook "X" denied the request: <message>``; a ``JSONPatch`` is applied and the object
  decoded (defaulted) again; a call that fails (connection, TLS, timeout, bad response) is
  ``Internal error occurred: failed calling webhook "X": ...`` under ``failurePolicy: Fail`` and
  skipped under ``Ignore``;
- ``sideEffects``: on a dry run, a matching webhook that is not ``None``/``NoneOnDryRun`` refuses the
  request (``admission webhook "X" does not support dry run``);
- ``reinvocationPolicy: IfNeeded``: when a later webhook changed the object, an earlier ``IfNeeded``
  webhook is called once more.

Defaults follow the configuration's version (``v1beta1``: failurePolicy Ignore, sideEffects Unknown,
matchPolicy Exact, timeout 30 s; ``v1``: Fail, required, Equivalent, 10 s) and are applied when the
configuration is stored (workloads.default_webhook_configuration), as the real server does.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import socket
import ssl
import time
import uuid

from . import errors, patch as patchlib
from .errors import APIError

REVIEW_VERSIONS = {"1.13": ("v1beta1",)}  # later versions: v1 and v1beta1
NO_SIDE_EFFECTS_ON_DRY_RUN = ("None", "NoneOnDryRun")


class CallError(Exception):
    """A webhook could not be called or answered unusably (failurePolicy decides)."""


def label_selector_matches(selector, labels: dict) -> bool:
    """metav1.LabelSelector semantics (``{}`` matches everything; ``None`` here too, as a defaulted field)."""
    if not selector:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _matches_list(values, item: str) -> bool:
    return "*" in (values or []) or item in (values or [])


def _resource_matches(patterns, resource: str, subresource: str) -> bool:
    want = f"{resource}/{subresource}" if subresource else resource
    for p in patterns or []:
        if p in ("*/*", want):
            return True
        if p == "*" and not subresource:
            return True
        if "/" in p:
            res, sub = p.split("/", 1)
            if subresource and ((res == "*" and sub == subresource) or (res == resource and sub == "*")):
                return True
    return False


def rule_matches(rule: dict, operation: str, group: str, version: str, resource: str, subresource: str, namespaced: bool) -> bool:
    scope = rule.get("scope", "*")
    if scope == "Namespaced" and not namespaced or scope == "Cluster" and namespaced:
        return False
    return (
        _matches_list(rule.get("operations"), operation)
        and _matches_list(rule.get("apiGroups"), group)
        and _matches_list(rule.get("apiVersions"), version)
        and _resource_matches(rule.get("resources"), resource, subresource)
    )


class Dispatcher:
    """``Dispatcher(api)``; ``api.webhooks.admit(...)`` is the plugin's Admit."""

    def __init__(self, api):
        self.api = api
        self.versions = REVIEW_VERSIONS.get(api.k8s_version, ("v1", "v1beta1"))
        self._contexts: dict[str, ssl.SSLContext] = {}

    def configured(self) -> bool:
        return bool(self.api.store.list("mutatingwebhookconfigurations")[0])

    # -- matching -------------------------------------------------------------------------
    def _hooks(self) -> list[dict]:
        configs, _ = self.api.store.list("mutatingwebhookconfigurations")
        return [
            hook
            for cfg in sorted(configs, key=lambda c: c["metadata"]["name"])
            for hook in cfg.get("webhooks") or []
            if isinstance(hook, dict)
        ]

    def _target(self, hook: dict, rt, operation: str, subresource: str):
        """The resource type the webhook is sent (the request's, or an equivalent one), or None."""

        def match(r):
            return any(
                rule_matches(rule, operation, r.group, r.version, r.name, subresource, r.namespaced)
                for rule in hook.get("rules") or []
            )

        if match(rt):
            return rt
        if hook.get("matchPolicy", "Exact") != "Equivalent":
            return None
        for r in self.api.by_gvr.values():
            if r.storage == rt.storage and r is not rt and match(r):
                return r
        return None

    def _namespace_labels(self, rt, obj: dict, namespace: str) -> dict | None:
        if rt.storage == "namespaces":
            return (obj.get("metadata") or {}).get("labels") or {}
        if not rt.namespaced:
            return None
        ns = self.api.store.get("namespaces", "", namespace)
        return ((ns or {}).get("metadata") or {}).get("labels") or {}

    # -- the plugin -----------------------------------------------------------------------
    def admit(self, rt, req, user, obj: dict, old: dict | None, operation: str, dry_run: bool) -> dict:
        """Run the matching webhooks over ``obj`` (internal form); return the mutated object."""
        hooks = self._hooks()
        if not hooks:
            return obj
        namespace = req.namespace
        ns_labels = self._namespace_labels(rt, obj, namespace)
        calls = []
        for hook in hooks:
            target = self._target(hook, rt, operation, req.subresource)
            if target is None:
                continue
            if ns_labels is not None and not label_selector_matches(hook.get("namespaceSelector"), ns_labels):
                continue
            sel = hook.get("objectSelector")
            labels_new = (obj.get("metadata") or {}).get("labels") or {}
            labels_old = ((old or {}).get("metadata") or {}).get("labels") or {}
            if sel and not (label_selector_matches(sel, labels_new) or (old and label_selector_matches(sel, labels_old))):
                continue
            if dry_run and hook.get("sideEffects", "Unknown") not in NO_SIDE_EFFECTS_ON_DRY_RUN:
                raise errors.bad_request(f'admission webhook "{hook.get("name")}" does not support dry run')
            calls.append((hook, target))
        changed_after: dict[int, bool] = {}
        for i, (hook, target) in enumerate(calls):
            before = obj
            obj = self._call_one(hook, target, rt, req, user, obj, old, operation, dry_run)
            if obj != before:
                for j in range(i):
                    changed_after[j] = True
        for j, (hook, target) in enumerate(calls):  # reinvocationPolicy: IfNeeded, once
            if changed_after.get(j) and hook.get("reinvocationPolicy") == "IfNeeded":
                obj = self._call_one(hook, target, rt, req, user, obj, old, operation, dry_run)
        return obj

    def _call_one(self, hook, target, rt, req, user, obj, old, operation, dry_run) -> dict:
        name = hook.get("name", "")
        try:
            return self._call(hook, target, rt, req, user, obj, old, operation, dry_run)
        except CallError as e:
            if hook.get("failurePolicy", "Ignore") == "Ignore":
                return obj
            raise errors.internal(f'failed calling webhook "{name}": {e}') from None

    def _review_version(self, hook: dict) -> str:
        for v in hook.get("admissionReviewVersions") or ["v1beta1"]:
            if v in self.versions:
                return v
        raise CallError(f"webhook does not accept known AdmissionReview versions {list(self.versions)}")

    def _call(self, hook, target, rt, req, user, obj, old, operation, dry_run) -> dict:
        version = self._review_version(hook)
        api = self.api
        view = _versioned(target, obj, api.k8s_version)
        old_view = _versioned(target, old, api.k8s_version) if old is not None else None
        uid = str(uuid.uuid4())
        meta = obj.get("metadata") or {}
        request = {
            "uid": uid,
            "kind": {"group": target.group, "version": target.version, "kind": target.kind},
            "resource": {"group": target.group, "version": target.version, "resource": target.name},
            "name": meta.get("name", ""),
            "namespace": req.namespace if rt.namespaced else "",
            "operation": operation,
            "userInfo": {"username": user.name, "groups": list(user.groups)},
            "object": view,
            "oldObject": old_view,
            "dryRun": bool(dry_run),
        }
        if req.subresource:
            request["subResource"] = req.subresource
        if self.versions != ("v1beta1",):  # 1.15+: what the client asked for
            request["requestKind"] = {"group": rt.group, "version": rt.version, "kind": rt.kind}
            request["requestResource"] = {"group": rt.group, "version": rt.version, "resource": rt.name}
            request["options"] = {
                "kind": "CreateOptions" if operation == "CREATE" else "UpdateOptions",
                "apiVersion": "meta.k8s.io/v1",
            }
        review = {"kind": "AdmissionReview", "apiVersion": f"admission.k8s.io/{version}", "request": request}
        answer = self._post(hook, review)
        if not isinstance(answer, dict) or not isinstance(answer.get("response"), dict):
            raise CallError("received invalid webhook response: expected response to be set")
        if version == "v1" and (answer.get("apiVersion"), answer.get("kind")) != ("admission.k8s.io/v1", "AdmissionReview"):
            raise CallError(
                f"received invalid webhook response: expected webhook response of "
                f"admission.k8s.io/v1, Kind=AdmissionReview, got {answer.get('apiVersion')}, "
                f"Kind={answer.get('kind')}"
            )
        resp = answer["response"]
        if version == "v1" and resp.get("uid") != uid:
            raise CallError(f'received invalid webhook response: expected response.uid="{uid}", got "{resp.get("uid", "")}"')
        if not resp.get("allowed"):
            raise _denied(hook.get("name", ""), resp.get("status") or resp.get("result"))
        patch = resp.get("patch")
        if not patch:
            return obj
        if version == "v1" and resp.get("patchType") != "JSONPatch":
            raise CallError(
                f'received invalid webhook response: expected patchType "JSONPatch", got "{resp.get("patchType", "")}"'
            )
        try:
            ops = json.loads(base64.b64decode(patch))
            patched = patchlib.json_patch(view, ops)
        except (ValueError, patchlib.PatchError) as e:
            raise errors.internal(str(e)) from None
        if not isinstance(patched, dict):
            raise errors.internal("the webhook's patch produced something that is not an object")
        patched["apiVersion"], patched["kind"] = target.api_version, target.kind
        (patched.get("metadata") or {}).pop("selfLink", None)
        new = api._decode(target, patched, req)
        api._default(target, new)
        return new

    def _post(self, hook: dict, review: dict) -> dict:
        cc = hook.get("clientConfig") or {}
        timeout = self._timeout(hook)
        ctx = self._context(cc.get("caBundle") or "")
        if cc.get("url"):
            from urllib.parse import urlsplit

            u = urlsplit(cc["url"])
            host, port, sni = u.hostname or "", u.port or 443, u.hostname
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
            shown = cc["url"]
            dial = None
        else:
            svc = cc.get("service") or {}
            sni = f"{svc.get('name')}.{svc.get('namespace')}.svc"
            port_wanted = int(svc.get("port") or 443)
            path = svc.get("path") or "/"
            shown = f"https://{sni}:{port_wanted}{path}"
            try:
                host, port = self._endpoint(svc, port_wanted)
            except CallError as e:
                raise CallError(f"Post {_quote(shown, self.api.k8s_version)}: {e}") from None
            dial = self.api.webhook_dialer
        if self.api.k8s_version != "1.13":
            sep = "&" if "?" in path else "?"
            path += f"{sep}timeout={int(timeout)}s"
            shown += f"{sep}timeout={int(timeout)}s"
        body = json.dumps(review).encode()
        deadline = time.monotonic() + timeout
        conn = _Conn(host, port, sni, ctx, timeout, dial)
        try:
            conn.request("POST", path, body, {"Content-Type": "application/json", "Accept": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if time.monotonic() > deadline:
                raise socket.timeout()
        except (socket.timeout, TimeoutError):
            raise CallError(self._timeout_message(shown)) from None
        except ssl.SSLCertVerificationError as e:
            raise CallError(f"Post {_quote(shown, self.api.k8s_version)}: {_x509(e, sni)}") from None
        except (OSError, http.client.HTTPException) as e:
            raise CallError(f"Post {_quote(shown, self.api.k8s_version)}: {e}") from None
        finally:
            conn.close()
        if resp.status != 200:
            raise CallError(
                f"received invalid webhook response: the server responded with status {resp.status}: "
                f"{data[:200].decode(errors='replace').strip()}"
            )
        try:
            return json.loads(data)
        except ValueError as e:
            raise CallError(f"received invalid webhook response: {e}") from None

    def _context(self, ca: str) -> ssl.SSLContext:
        """The TLS client context trusting ``caBundle`` (the system roots without one), built once per bundle."""
        ctx = self._contexts.get(ca)
        if ctx is None:
            try:
                ctx = ssl.create_default_context(cadata=base64.b64decode(ca).decode()) if ca else ssl.create_default_context()
            except (ValueError, ssl.SSLError) as e:
                raise CallError(f"could not get REST client: unable to load root certificates: {e}") from None
            if len(self._contexts) > 64:
                self._contexts.clear()
            self._contexts[ca] = ctx
        return ctx

    def _timeout(self, hook: dict) -> float:
        """1.13's webhook client: a fixed 30 s; 1.14+: ``timeoutSeconds`` (v1 default 10)."""
        return 30.0 if self.api.k8s_version == "1.13" else float(hook.get("timeoutSeconds") or 10)

    def _timeout_message(self, shown: str) -> str:
        if self.api.k8s_version == "1.13":
            return f"Post {shown}: net/http: request canceled (Client.Timeout exceeded while awaiting headers)"
        return f'failed to call webhook: Post "{shown}": context deadline exceeded'

    def _endpoint(self, svc: dict, port_wanted: int) -> tuple[str, int]:
        """A ready pod behind the Service and the targetPort (what the endpoints controller would list)."""
        ns, name = svc.get("namespace", ""), svc.get("name", "")
        store = self.api.store
        service = store.get("services", ns, name)
        if service is None:
            raise CallError(f'service "{name}" not found')
        spec = service.get("spec") or {}
        sport = next((p for p in spec.get("ports") or [] if int(p.get("port", 0)) == port_wanted), None)
        if sport is None:
            raise CallError(f'service "{name}" has no port {port_wanted}')
        selector = spec.get("selector") or {}
        pods, _ = store.list("pods", ns)
        ready = []
        for p in pods:
            st = p.get("status") or {}
            if not selector or not label_selector_matches({"matchLabels": selector}, p["metadata"].get("labels") or {}):
                continue
            if p["metadata"].get("deletionTimestamp") or not st.get("podIP"):
                continue
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []):
                ready.append(p)
        if not ready:
            raise CallError(f'no endpoints available for service "{name}"')
        pod = random.choice(ready)
        target = sport.get("targetPort", port_wanted)
        if isinstance(target, str) and not target.isdigit():
            named = [
                cp.get("containerPort")
                for c in (pod.get("spec") or {}).get("containers") or []
                for cp in c.get("ports") or []
                if cp.get("name") == target
            ]
            if not named:
                raise CallError(f'no endpoints available for service "{name}"')
            target = named[0]
        return pod["status"]["podIP"], int(target)


def _x509(e: ssl.SSLCertVerificationError, name: str) -> str:
    """Go's crypto/x509 wording for the verification failures a webhook's certificate meets."""
    if e.verify_code in (2, 18, 19, 20, 21):
        return "x509: certificate signed by unknown authority"
    if e.verify_code == 62:
        return f"x509: certificate is not valid for {name}"
    if e.verify_code == 10:
        return "x509: certificate has expired or is not yet valid"
    return f"x509: {e.verify_message}"


def _quote(url: str, k8s_version: str) -> str:
    return url if k8s_version == "1.13" else f'"{url}"'


def _versioned(rt, obj: dict | None, k8s_version: str) -> dict | None:
    if obj is None:
        return None
    out = rt.view(obj, k8s_version)
    (out.get("metadata") or {}).pop("selfLink", None)
    return out


def _denied(name: str, status) -> APIError:
    """webhookerrors.ToStatusErr: the webhook's Status, code at least 400, the message prefixed."""
    status = status if isinstance(status, dict) else {}
    denied = f'admission webhook "{name}" denied the request'
    code = int(status.get("code") or 0)
    if code < 400:
        code = 400
    if status.get("message"):
        message = f"{denied}: {status['message']}"
    elif status.get("reason"):
        message = f"{denied}: {status['reason']}"
    else:
        message = f"{denied} without explanation"
    return APIError(code, status.get("reason", ""), message, status.get("details"))


class _Conn(http.client.HTTPSConnection):
    """HTTPS to ``host:port`` whose socket comes from ``dial`` (the pod network) and whose certificate
    is verified for ``sni`` (the Service's DNS name), not for the address dialled."""

    def __init__(self, host, port, sni, ctx, timeout, dial):
        super().__init__(host, port, timeout=timeout, context=ctx)
        self._sni, self._ctx, self._dial = sni, ctx, dial

    def connect(self):
        if self._dial is not None:
            sock = self._dial(self.host, self.port, self.timeout)
        else:
            sock = socket.create_connection((self.host, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Go's net.Dial does
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._sni)


class _Captured(Exception):
    def __init__(self, new: dict, cur: dict):
        super().__init__("captured")
        self.new, self.cur = new, cur


class _Changed(Exception):
    pass


def guaranteed_update(api, req, user, build, precondition: bool, dry_run: bool):
    """An update whose webhooks are called outside the store lock, as GuaranteedUpdate does it: the
    object is built and admitted from one version, then written only if that version is still current
    (else everything again from the new one). A status-subresource write calls no webhook here."""
    if req.subresource:
        return api._update_locked(req, user, build, precondition, dry_run)

    def capture(new, cur):
        raise _Captured(new, cur)

    for _ in range(32):
        try:
            api._update_locked(req, user, build, precondition, True, capture)
            raise errors.internal("update admission did not run")  # capture always raises
        except _Captured as c:
            new, cur = c.new, c.cur
        admitted = api.webhooks.admit(req.rt, req, user, new, cur, "UPDATE", dry_run)
        seen = cur["metadata"].get("resourceVersion")

        def final(_new, cur_now, admitted=admitted, seen=seen):
            if cur_now["metadata"].get("resourceVersion") != seen:
                raise _Changed()
            return admitted

        try:
            return api._update_locked(req, user, build, precondition, dry_run, final)
        except _Changed:
            continue
    raise errors.conflict(req.rt, req.name)
