"""Client connections: who is asking (pod identity), in which proxy mode, and its audit fields.

Worked out once per connection and identity file: keep-alive requests reuse it until podwatch
rewrites the file (checked at most once a second), so a pod's namespace (which namespace-scoped
rules decide on) is never older than the file. A *new* connection checks the file first (one stat):
its identity is the file's as of the moment it connected, never a version up to a second old, so
an address podwatch has reassigned to another pod is never judged as the old pod's (the IP-reuse
race, docs/threat-model.md). Dropped on disconnect.

The scope that decides for the connection (proxy/scopes.py) is chosen once per connection, policy
and set of namespace policies (:meth:`Clients.scope`), not per request.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from proxy import mitm
from proxy.audit import encode
from proxy.identity import EMPTY, IdentityMap, canonical_ip


@dataclasses.dataclass(slots=True)
class ClientInfo:
    """What the audit and the decision need from a client connection."""

    client_ip: str
    pod: dict  # namespace, name, serviceAccount ("" when unknown)
    regular: bool  # standard (regular) mode rather than transparent
    audit_members: str  # its audit fields, JSON-encoded, without braces
    identity: object  # the IdentityMap and its generation this was looked up in
    generation: int
    scope: Any = None  # the deciding Scope, chosen in ``scope_policy`` and ``scope_delegated``
    scope_policy: Any = None  # the ScopedPolicy ...
    scope_delegated: Any = None  # ... and the namespace policies (dict) the scope was chosen in
    # the last host this connection's requests went to, in which Scope, and that host's entry in the
    # scope's host index (Scope.allowing_on)
    memo_scope: Any = None
    memo_host: str = ""
    memo_hit: Any = None


class Clients:
    def __init__(self, node: str = ""):
        self.node = node  # NODE_NAME, when the identity file names no node
        self.known: dict[str, ClientInfo] = {}  # client connection id -> ClientInfo

    def get(self, client, identity: IdentityMap) -> ClientInfo:
        """The client connection's info, looked up in ``identity`` (the map in force)."""
        info = self.known.get(client.id)
        # a known connection: a clock read, a stat at most once a second; a new one: a stat now
        identity.refresh(force=info is None)
        if info is not None and info.identity is identity and info.generation == identity.generation:
            return info
        client_ip = canonical_ip(str(client.peername[0])) if client.peername else ""
        pod = identity.lookup(client_ip) if client_ip else dict(EMPTY)
        regular = mitm.is_regular_mode(client)
        members = encode(
            {
                "client_ip": client_ip,
                "pod_namespace": pod["namespace"],
                "pod_name": pod["name"],
                "pod_service_account": pod["serviceAccount"],
                "node": identity.node or self.node,
                "proxy_mode": "regular" if regular else "transparent",
            }
        )[1:-1]
        info = ClientInfo(client_ip, pod, regular, members, identity, identity.generation)
        if client.id and not mitm.is_closed(client):  # closed: client_disconnected has run
            self.known[client.id] = info
        return info

    @staticmethod
    def scope(info: ClientInfo, policy, delegated: Mapping) -> Any:
        """The scope of ``policy`` (a ScopedPolicy) deciding for this client (memoised per connection)."""
        if info.scope_policy is policy and info.scope_delegated is delegated:
            return info.scope
        pod = info.pod
        info.scope = policy.select(pod["namespace"], pod["serviceAccount"], pod.get("labels") or {}, delegated)
        info.scope_policy, info.scope_delegated = policy, delegated
        return info.scope

    def forget(self, client) -> None:
        self.known.pop(client.id, None)
