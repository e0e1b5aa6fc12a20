"""The Deployment objects the initializer tests feed in (unit tests and tests against kubesim)."""

from __future__ import annotations

NAME = "tproxy.initializer.kubernetes.io"
ANN = "initializer.kubernetes.io/tproxy"
DEPLOY = "apps/v1beta1"


def deployment(name: str, annotated=True, group: str = DEPLOY, pending=None, meta: dict | None = None, **podspec) -> dict:
    """A Deployment of one ``debian`` container (``podspec`` adds or overrides pod spec keys).

    ``annotated``: True → the tproxy annotation "true", a string → that value, None → no annotation.
    ``pending``: initializer names for ``metadata.initializers.pending`` (None: no initializers).
    ``meta``: extra metadata (namespace, uid, ...). extensions/v1beta1 gets the selector it requires."""
    m = {"name": name, **(meta or {})}
    if annotated is not None:
        m["annotations"] = {ANN: "true" if annotated is True else annotated}
    if pending is not None:
        m["initializers"] = {"pending": [{"name": n} for n in pending]}
    pod = {"containers": [{"name": "app", "image": "debian"}]}
    pod.update(podspec)
    spec = {"template": {"metadata": {"labels": {"app": name}}, "spec": pod}}
    if group == "extensions/v1beta1":
        spec["selector"] = {"matchLabels": {"app": name}}
    return {"apiVersion": group, "kind": "Deployment", "metadata": m, "spec": spec}
