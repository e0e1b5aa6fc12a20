"""Cluster-IP allocation for Services: a free address of the server's ``service_cidr``."""

from __future__ import annotations

import ipaddress

from . import errors
from .errors import FieldError
from .resources import ResourceType


class ClusterIPMixin:
    """The service IP allocator (``self.service_net``, the store's Services)."""

    def _allocate_cluster_ip(self, rt: ResourceType, obj: dict) -> None:
        """The service IP allocator: a free address of ``service_cidr`` unless one is asked for
        (``None`` = headless). Done under the store lock by the caller's create."""
        spec = obj.setdefault("spec", {})
        if spec.get("type") == "ExternalName" or spec.get("clusterIP") == "None":
            return
        with self.store.lock:
            items, _ = self.store.list("services")
            used = {(o.get("spec") or {}).get("clusterIP") for o in items}
            want = spec.get("clusterIP")
            if want:
                try:
                    ok = ipaddress.ip_address(want) in self.service_net
                except ValueError:
                    ok = False
                if not ok:
                    raise errors.invalid(
                        rt,
                        obj["metadata"]["name"],
                        [
                            FieldError(
                                "Invalid",
                                "spec.clusterIP",
                                f"provided IP is not in the valid range. The range of valid IPs is {self.service_net}",
                                want,
                            )
                        ],
                    )
                if want in used:
                    raise errors.invalid(
                        rt,
                        obj["metadata"]["name"],
                        [FieldError("Invalid", "spec.clusterIP", "provided IP is already allocated", want)],
                    )
                return
            for ip in self.service_net.hosts():
                if str(ip) not in used:
                    spec["clusterIP"] = str(ip)
                    return
            raise errors.internal("failed to allocate a serviceIP: range is full")
