"""Client connections: who is asking (pod identity), in which proxy mode, and its audit fields.

Worked out once per connection and identity file: keep-alive requests reuse it until podwatch
rewrites the file (checked at most once a second), so a pod's namespace (which namespace-scoped
rules decide on) is never older than the file. Dropped on disconnect.
"""
from __future__ import annotations

import dataclasses

from proxy import mitm
from proxy.audit import encode
from proxy.identity import EMPTY, IdentityMap, canonical_ip


@dataclasses.dataclass(slots=True)
class ClientInfo:
    """What the audit and the decision need from a client connection."""
    client_ip: str
    pod: dict                           # namespace, name, serviceAccount ("" when unknown)
    regular: bool                       # standard (regular) mode rather than transparent
    audit_members: str                  # its audit fields, JSON-encoded, without braces
    identity: object                    # the IdentityMap and its generation this was looked up in
    generation: int


class Clients:
    def __init__(self, node: str = ""):
        self.node = node  # NODE_NAME, when the identity file names no node
        self.known: dict[str, ClientInfo] = {}  # client connection id -> ClientInfo

    def get(self, client, identity: IdentityMap) -> ClientInfo:
        """The client connection's info, looked up in ``identity`` (the map in force)."""
        identity.refresh()  # a clock read; a stat at most once a second
        info = self.known.get(client.id)
        if info is not None and info.identity is identity and info.generation == identity.generation:
            return info
        client_ip = canonical_ip(str(client.peername[0])) if client.peername else ""
        pod = identity.lookup(client_ip) if client_ip else dict(EMPTY)
        regular = mitm.is_regular_mode(client)
        members = encode({
            "client_ip": client_ip, "pod_namespace": pod["namespace"], "pod_name": pod["name"],
            "pod_service_account": pod["serviceAccount"], "node": identity.node or self.node,
            "proxy_mode": "regular" if regular else "transparent"})[1:-1]
        info = ClientInfo(client_ip, pod, regular, members, identity, identity.generation)
        if client.id and not mitm.is_closed(client):  # closed: client_disconnected has run
            self.known[client.id] = info
        return info

    def forget(self, client) -> None:
        self.known.pop(client.id, None)
