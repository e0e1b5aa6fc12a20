"""kubesim's Kubernetes 1.7 API server emulator (HTTPS, Initializers, RBAC, watch, faults).

>>> srv = APIServer(k8s_version="1.7").start()     # doctest: +SKIP
>>> srv.url, srv.ca_file, srv.admin_token            # doctest: +SKIP
"""

from .faults import FaultSpec
from .server import APIServer

__all__ = ["APIServer", "FaultSpec"]
