"""A thin Kubernetes REST client: any path, any query parameter, streaming watches.

Why not the typed APIs: the 1.7 Initializers flow needs query parameters the generated clients do
not know (``includeUninitialized``), legacy groups (``apps/v1beta1``, ``extensions/v1beta1``,
``admissionregistration.k8s.io/v1alpha1``) and a watch whose raw ``ERROR`` events we can type.
So this wraps ``kubernetes==36.0.3``'s ``ApiClient.call_api`` (auth, TLS, kubeconfig and in-cluster
loading all come from the official client) and speaks plain JSON dicts.

    client = Client.from_config()                       # $KUBECONFIG or in-cluster
    path = resource_path("apps/v1beta1", "deployments", "default", "web")
    dep = client.get(path, includeUninitialized="true")
    for etype, obj in client.watch(resource_path("v1", "pods"), resource_version=rv): ...
"""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any, Iterable, Iterator
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import InClusterConfigLoader

from .errors import StreamError, from_response

__all__ = ["resource_path", "Client", "WatchStream", "ConfigError", "PATCH_CONTENT_TYPES", "WATCH_EVENT_TYPES"]

PATCH_CONTENT_TYPES = {
    "strategic": "application/strategic-merge-patch+json",
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
}

WATCH_EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK")

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class ConfigError(Exception):
    """No usable cluster configuration; the message says everything that was tried."""


def resource_path(
    group_version: str, resource: str, namespace: str | None = None, name: str | None = None, subresource: str | None = None
) -> str:
    """URL path of a collection or object.

    ``("v1", "pods", "ns", "p") -> "/api/v1/namespaces/ns/pods/p"``;
    ``("apps/v1beta1", "deployments") -> "/apis/apps/v1beta1/deployments"`` (all namespaces).
    """
    if not group_version or not resource:
        raise ValueError("resource_path needs a group_version and a resource")
    if subresource and not name:
        raise ValueError("a subresource needs an object name")
    gv = group_version.strip("/")
    parts = ["/api/" + gv if "/" not in gv else "/apis/" + gv]
    if namespace:
        parts.append("namespaces/" + quote(namespace, safe=""))
    parts.append(resource)
    if name:
        parts.append(quote(name, safe=""))
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def _query_list(query: Any) -> list[tuple[str, str]]:
    """dict or (k, v) pairs -> list of string pairs; booleans become "true"/"false", None is dropped."""
    if not query:
        return []
    items: Iterable = query.items() if isinstance(query, dict) else query
    out = []
    for k, v in items:
        if v is None:
            continue
        if isinstance(v, bool):
            v = "true" if v else "false"
        out.append((str(k), str(v)))
    return out


class WatchStream:
    """One open watch request: iterate for ``(type, object)``; ``close()`` from any thread stops it.

    Why a class: an informer must be able to stop a watch that is blocked reading a quiet stream;
    closing the socket (``shutdown``) wakes the reader, which then ends quietly.
    """

    def __init__(self, response, path: str, logger=None):
        self._resp = response
        self._path = path
        self._closed = threading.Event()
        self._log = logger

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        conn = getattr(self._resp, "connection", None) or getattr(self._resp, "_connection", None)
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            self._resp.close()
        except Exception:  # noqa: BLE001 - best effort on an already broken socket
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        buf = b""
        clean_end = False
        try:
            try:
                for chunk in self._chunks():
                    if self.closed:
                        return
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        event = self._decode(line)
                        if event is not None:
                            yield event
                clean_end = True
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if self.closed:
                    return
                raise StreamError(f"watch {self._path}: stream broken: {exc}") from exc
            if self.closed:
                return
            if buf.strip():
                # The server (or something in between) closed the stream in the middle of an event.
                event = self._decode(buf, final=True)
                if event is not None:
                    yield event
        finally:
            if clean_end and not buf.strip():
                try:
                    self._resp.release_conn()
                except Exception:  # noqa: BLE001
                    pass
            else:
                self.close()

    def _chunks(self) -> Iterator[bytes]:
        """Bytes as they arrive. ``stream()`` is right for chunked bodies, but on a body without
        chunked encoding (HTTP/1.0-style, until close) it blocks until 64 KiB arrive; ``read1`` does not."""
        if getattr(self._resp, "chunked", False):
            yield from self._resp.stream(65536, decode_content=True)
            return
        while True:
            data = self._resp.read1(65536)
            if not data:
                return
            yield data

    def _decode(self, line: bytes, final: bool = False) -> tuple[str, dict] | None:
        line = line.strip()
        if not line:
            return None
        try:
            event = json.loads(line)
        except ValueError as exc:
            what = "stream cut mid-event" if final else "undecodable event"
            raise StreamError(f"watch {self._path}: {what}: {line[:200]!r}") from exc
        if not isinstance(event, dict) or "type" not in event:
            raise StreamError(f"watch {self._path}: not a watch event: {line[:200]!r}")
        etype, obj = event.get("type"), event.get("object")
        if etype == "ERROR":
            status = obj if isinstance(obj, dict) else {"message": str(obj)}
            raise from_response(int(status.get("code") or 500), status)
        if etype not in WATCH_EVENT_TYPES or not isinstance(obj, dict):
            if self._log is not None:
                self._log.warning("watch_unknown_event", path=self._path, type=etype)
            return None
        return etype, obj


class Client:
    """Raw REST on any path over an official ``kubernetes.client.ApiClient``.

    Every call returns the decoded JSON body (a dict) or raises a typed
    :class:`controllerkit.errors.ApiError` (from the Status body) or
    :class:`controllerkit.errors.StreamError` (connection failures). Thread-safe: the underlying
    urllib3 pool is shared by the informer's watch and the workers.
    """

    #: default per-request timeout (seconds) for non-watch calls; above the 1.7 API server's own 30 s
    #: limit on a create blocked by pending initializers, so its 504 Status arrives as a typed Timeout
    default_timeout: float = 60.0
    #: connect timeout for watches (the read side waits for the server's timeoutSeconds)
    watch_connect_timeout: float = 10.0

    def __init__(self, api_client: k8s_client.ApiClient, *, default_timeout: float | None = None, logger=None):
        self.api_client = api_client
        if default_timeout is not None:
            self.default_timeout = default_timeout
        self._log = logger

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls, kubeconfig: str | None = None, *, context: str | None = None, service_account_dir: str = SERVICE_ACCOUNT_DIR
    ) -> "Client":
        """kubeconfig path given -> load it; else ``$KUBECONFIG`` if set; else in-cluster config.

        In-cluster means ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT`` plus the service
        account ``token`` and ``ca.crt`` in ``service_account_dir``. Raises :class:`ConfigError`
        naming each thing tried when none works.
        """
        tried: list[str] = []
        path = kubeconfig or os.environ.get("KUBECONFIG") or None
        if path:
            source = "--kubeconfig" if kubeconfig else "$KUBECONFIG"
            # $KUBECONFIG may be a list; the official loader takes the first existing file.
            first = path.split(os.pathsep)[0] if not kubeconfig else path
            if not os.path.exists(first):
                raise ConfigError(f"kubeconfig {first!r} (from {source}) does not exist")
            cfg = k8s_client.Configuration()
            try:
                k8s_config.load_kube_config(config_file=first, context=context, client_configuration=cfg, persist_config=False)
            except (ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
                raise ConfigError(f"kubeconfig {first!r} (from {source}) is not usable: {exc}") from exc
            return cls._from_configuration(cfg)
        tried.append("no kubeconfig argument and $KUBECONFIG is not set")
        loader = InClusterConfigLoader(
            token_filename=os.path.join(service_account_dir, "token"), cert_filename=os.path.join(service_account_dir, "ca.crt")
        )
        cfg = k8s_client.Configuration()
        try:
            loader.load_and_set(cfg)
        except (ConfigException, OSError) as exc:
            tried.append(f"in-cluster config (KUBERNETES_SERVICE_HOST/PORT, {service_account_dir}/token, ca.crt): {exc}")
            raise ConfigError("no Kubernetes configuration found: " + "; ".join(tried)) from exc
        return cls._from_configuration(cfg)

    @classmethod
    def from_url(cls, host: str, *, token: str | None = None, ca_file: str | None = None, verify_ssl: bool = True) -> "Client":
        """Direct construction (tests, tools): ``host`` like ``https://127.0.0.1:6443``."""
        cfg = k8s_client.Configuration()
        cfg.host = host.rstrip("/")
        cfg.verify_ssl = verify_ssl
        if ca_file:
            cfg.ssl_ca_cert = ca_file
        if token:
            cfg.api_key["BearerToken"] = token
            cfg.api_key_prefix["BearerToken"] = "Bearer"
        return cls._from_configuration(cfg)

    @classmethod
    def _from_configuration(cls, cfg: k8s_client.Configuration) -> "Client":
        # Room for the informer's long watch plus several workers without discarding connections.
        cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, 16)
        return cls(k8s_client.ApiClient(configuration=cfg))

    @property
    def host(self) -> str:
        return self.api_client.configuration.host

    def close(self) -> None:
        """Release the connection pool (open watches end with a StreamError or quietly if closed)."""
        self.api_client.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- raw REST -----------------------------------------------------------------------------
    def _open(self, method: str, path: str, query, body, content_type: str, timeout):
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            resp = self.api_client.call_api(
                path,
                method.upper(),
                query_params=_query_list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _preload_content=False,
                _request_timeout=timeout,
            )
        except ApiException as exc:
            if exc.status:
                raise from_response(exc.status, exc.body or exc.reason or "", getattr(exc, "headers", None)) from None
            raise StreamError(f"{method.upper()} {path}: {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StreamError(f"{method.upper()} {path}: {exc}") from exc
        return resp

    def request(
        self,
        method: str,
        path: str,
        *,
        query=None,
        body=None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> dict:
        """One REST call; returns the decoded JSON body (``{}`` when empty)."""
        resp = self._open(method, path, query, body, content_type, timeout if timeout is not None else self.default_timeout)
        try:
            data = resp.data
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StreamError(f"{method.upper()} {path}: reading the response failed: {exc}") from exc
        finally:
            try:
                resp.release_conn()
            except Exception:  # noqa: BLE001
                pass
        if not data or not data.strip():
            return {}
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StreamError(f"{method.upper()} {path}: response is not JSON: {data[:200]!r}") from exc

    def get(self, path: str, **query) -> dict:
        return self.request("GET", path, query=query)

    def list(self, path: str, **query) -> dict:
        return self.request("GET", path, query=query)

    def create(self, path: str, obj: dict, **query) -> dict:
        return self.request("POST", path, query=query, body=obj)

    def replace(self, path: str, obj: dict, **query) -> dict:
        return self.request("PUT", path, query=query, body=obj)

    def patch(self, path: str, patch, *, patch_type: str = "strategic", **query) -> dict:
        """``patch_type``: ``"strategic"`` | ``"merge"`` | ``"json"`` (a list of RFC 6902 operations)."""
        try:
            ctype = PATCH_CONTENT_TYPES[patch_type]
        except KeyError:
            raise ValueError(f"patch_type must be one of {sorted(PATCH_CONTENT_TYPES)}, not {patch_type!r}") from None
        if patch_type == "json" and not isinstance(patch, list):
            raise ValueError("a json patch is a list of operations")
        return self.request("PATCH", path, query=query, body=patch, content_type=ctype)

    def delete(self, path: str, body: dict | None = None, **query) -> dict:
        return self.request("DELETE", path, query=query, body=body)

    # -- watch ----------------------------------------------------------------------------------
    def open_watch(
        self, path: str, *, resource_version: str | None = None, timeout_seconds: int | None = None, **query
    ) -> WatchStream:
        """Start ``GET path?watch=true``; the returned :class:`WatchStream` yields events and can be
        closed from another thread. HTTP errors (e.g. 410) raise the typed error here."""
        q = _query_list(query)
        q.append(("watch", "true"))
        if resource_version:
            q.append(("resourceVersion", str(resource_version)))
        if timeout_seconds:
            q.append(("timeoutSeconds", str(int(timeout_seconds))))
        read = (timeout_seconds + 30) if timeout_seconds else None
        resp = self._open("GET", path, q, None, "application/json", (self.watch_connect_timeout, read))
        return WatchStream(resp, path, self._log)

    def watch(
        self, path: str, *, resource_version: str | None = None, timeout_seconds: int | None = None, **query
    ) -> Iterator[tuple[str, dict]]:
        """Yield ``(type, object)`` for ADDED/MODIFIED/DELETED/BOOKMARK until the server ends the stream.

        An ``ERROR`` event raises its typed error (410 -> :class:`~controllerkit.errors.Gone`); a
        stream cut mid-line raises :class:`~controllerkit.errors.StreamError`.
        """
        stream = self.open_watch(path, resource_version=resource_version, timeout_seconds=timeout_seconds, **query)
        with stream:
            yield from stream
