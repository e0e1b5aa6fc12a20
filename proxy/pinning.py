"""Connection pinning: only what a decision approved is dialled, and only at the checked address.

A request the decision allows is *approved* for its client connection: ``(host, port) → address``,
the address that was resolved and checked against ``deny_ranges``. mitmproxy's ``server_connect``
hook is the choke point for every upstream connection it tries to open (HTTP, raw TCP, anything):
:meth:`Pinning.server_connect` refuses one without an approval (``server.error``: never opened) and
pins an approved one to its checked address, so no DNS answer between the check and the connect
can move it. Once open, the connection gets its approved name back (:meth:`server_connected`).
"""

from __future__ import annotations

import structlog

from proxy import mitm
from proxy.policy import normalize_host

log = structlog.get_logger()


class Pinning:
    def __init__(self, metrics):
        self.metrics = metrics
        # client connection id -> {(host, port): pinned address}
        self.approved: dict[str, dict[tuple[str, int], str]] = {}
        # server connection id -> (host name, port) while it is being dialled by address
        self.dialled_by_name: dict[str, tuple[str, int]] = {}

    def approve(self, client, host: str, port: int, address: str) -> None:
        """Let ``client`` dial ``(host, port)``, at ``address``."""
        if not mitm.is_closed(client):  # (gone while we awaited DNS: nothing to keep)
            self.approved.setdefault(client.id, {})[(host, port)] = address

    def forget(self, client) -> None:
        self.approved.pop(client.id, None)

    def server_connect(self, data) -> None:
        """Refuse an unapproved upstream connection; pin an approved one to its checked address."""
        address = data.server.address
        if not address:
            data.server.error = "tproxy: no destination"
            return
        try:
            host = normalize_host(str(address[0]))
        except Exception:  # noqa: BLE001
            host = str(address[0])
        pinned = self.approved.get(data.client.id, {}).get((host, address[1]))
        if pinned is None:
            self.metrics.blocked_connections.labels("not-approved").inc()
            log.warning(
                "upstream_connection_refused",
                client=str(data.client.peername),
                destination=f"{address[0]}:{address[1]}",
                reason="not allowed by a request decision",
            )
            data.server.error = "tproxy: connection not allowed by policy"
            return
        # Dial the checked address. The name is put back once connected (server_connected), because
        # mitmproxy reuses an upstream connection only for requests whose (host, port) equals its
        # address: without that, every keep-alive request would open a new connection and the 6th
        # would wait forever on mitmproxy's 5-connections-per-address semaphore.
        self.dialled_by_name[data.server.id] = address
        mitm.pin_server_address(data.server, (pinned, address[1]))

    def server_connected(self, data) -> None:
        name_address = self.dialled_by_name.pop(data.server.id, None)
        if name_address is not None:
            mitm.restore_server_address(data.server, name_address)

    def server_connect_error(self, data) -> None:
        self.dialled_by_name.pop(data.server.id, None)
