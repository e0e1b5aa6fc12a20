"""Routing: resolving a URL to a request (verb, resource, namespace, name, subresource) and the
filter chain every API request passes: metrics/health/openapi/discovery, authentication,
impersonation, content negotiation, injected faults, authorization, then the verb's handler.
"""

from __future__ import annotations

import ssl
import time
from urllib.parse import parse_qsl, unquote, urlsplit

import structlog

from . import discovery, errors, impersonation, openapi, protobuf, reviews, scale, selectors
from .discovery import GIT_VERSIONS
from .errors import APIError
from .rbac import User, forbidden_message
from .resources import ResourceType
from .transport import Handler, Streamed, send_json, send_text, slurp_body

log = structlog.get_logger("kubesim.apiserver")


def truthy(v: str | None) -> bool:
    return v is not None and v.lower() not in ("", "false", "0")


class Request:
    """What the request-info resolver extracted from the URL (like apiserver's RequestInfo)."""

    def __init__(self):
        self.verb = ""
        self.rt: ResourceType | None = None
        self.namespace = ""
        self.name = ""
        self.subresource = ""
        self.query: dict[str, str] = {}


class RoutingMixin:
    """The request path of :class:`~kubesim.apiserver.server.APIServer` up to the verb handlers."""

    def dispatch(self, h: Handler, method: str) -> None:
        self.request_count += 1
        h.kubesim_req = None
        h.kubesim_code = 0
        h.kubesim_proto = False
        t0 = time.perf_counter()
        try:
            self._dispatch(h, method)
        except errors.PlainError as e:
            send_text(h, e.code, e.message)
        except APIError as e:
            send_json(h, e.code, e.status())
        except Streamed:
            pass
        except (ConnectionError, ssl.SSLError, BrokenPipeError):
            h.close_connection = True
        except Exception as e:  # a bug: answer 500 and keep serving
            log.exception("request_failed", method=method, path=h.path)
            try:
                send_json(h, 500, errors.internal(f"{type(e).__name__}: {e}").status())
            except OSError:
                h.close_connection = True
        finally:
            req = h.kubesim_req
            elapsed = time.perf_counter() - t0
            if req is not None:
                self.m_requests.labels(req.verb, req.rt.qualified, str(h.kubesim_code)).inc()
                if req.verb != "watch":
                    self.m_latency.labels(req.verb).observe(elapsed)
            if self.log_requests:
                log.info(
                    "request",
                    method=method,
                    path=h.path,
                    code=h.kubesim_code,
                    user=getattr(h, "kubesim_user", None),
                    ms=round(elapsed * 1000, 2),
                )

    def _dispatch(self, h: Handler, method: str) -> None:
        parts = urlsplit(h.path)
        path = parts.path.rstrip("/") or "/"
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if method != "GET":
            slurp_body(h)
        if path == "/metrics" and method == "GET":
            data = self.metrics_text()
            h.send_response(200)
            h.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        if path in ("/healthz", "/healthz/ping", "/livez", "/readyz"):
            data = b"ok"
            h.send_response(200)
            h.send_header("Content-Type", "text/plain; charset=utf-8")
            h.send_header("Content-Length", "2")
            h.end_headers()
            h.wfile.write(data)
            return
        if path == "/openapi/v2" and method == "GET" and openapi.serve(h, self.k8s_version, GIT_VERSIONS[self.k8s_version]):
            return
        discovery = self._discovery(path, h)
        if discovery is not None:
            if method != "GET":
                raise APIError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            send_json(h, 200, discovery)
            return
        user = self.authenticate(h.headers.get("Authorization"))
        h.kubesim_user = user.name if user else None
        if user is None:
            raise errors.unauthorized()
        user = impersonation.apply(self, h.headers, user)
        req = self._resolve(method, path, query)
        if req is None:
            # No route: the apiserver's mux answers with net/http's NotFound (text, not a Status);
            # Go clients turn it into "the server could not find the requested resource".
            raise errors.PlainError(404, "404 page not found\n")
        if req.verb not in req.rt.verbs and not req.subresource:
            raise errors.PlainError(405, "405: Method Not Allowed")
        h.kubesim_req = req
        proto = protobuf.prefers_protobuf(h.headers.get("Accept"))
        if proto is None:
            raise APIError(
                406,
                "NotAcceptable",
                "only the following media types are accepted: application/json, "
                "application/yaml, application/vnd.kubernetes.protobuf",
            )
        h.kubesim_proto = proto
        faults = self.faults
        exempt = h.headers.get("X-Kubesim-No-Faults") == "1"
        if not exempt and faults.active:
            if faults.latency_ms:
                time.sleep(faults.latency_ms / 1000.0)
            if faults.roll("error500"):
                raise errors.internal("injected fault (kubesim --faults error500)")
        if not reviews.open_to_everyone(req.rt):
            self._authorize(user, req.verb, req.rt, req.subresource, req.name, req.namespace)
        if req.subresource == "scale":
            return scale.handle(self, h, req, user, exempt)
        handler = getattr(self, "_verb_" + req.verb)
        handler(h, req, user, exempt)

    def _resolve(self, method: str, path: str, query: dict) -> Request | None:
        segs = [unquote(s) for s in path.split("/") if s]  # clients escape ':' in "system:..." names
        if segs[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", segs[2:]
        elif len(segs) >= 3 and segs[0] == "apis":
            group, version, rest = segs[1], segs[2], segs[3:]
        else:
            return None
        req = Request()
        req.query = query
        legacy_watch = False
        if rest and rest[0] == "watch":
            legacy_watch, rest = True, rest[1:]
        if len(rest) >= 3 and rest[0] == "namespaces" and (group, version, rest[2]) in self.by_gvr:
            req.namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            return None
        rt = self.by_gvr.get((group, version, rest[0]))
        if rt is None:
            return None
        if rt.namespaced is False and req.namespace:
            return None
        req.rt = rt
        if len(rest) >= 2:
            req.name = rest[1]
        if len(rest) == 3:
            req.subresource = rest[2]
            if req.subresource not in rt.subresources() + (("log",) if rt.storage == "pods" and method == "GET" else ()):
                return None
            if legacy_watch:
                return None
        # ?watch=true only turns a collection GET into a watch; a GET by name ignores it (1.7
        # RequestInfo); watching one object by name is the legacy /watch/ path.
        watch = legacy_watch or (truthy(query.get("watch")) and not req.name)
        if method == "GET":
            req.verb = "watch" if watch else ("get" if req.name else "list")
        elif method == "POST":
            if req.name and not req.subresource:
                return None
            req.verb = "create"
        elif method == "PUT":
            req.verb = "update"
        elif method == "PATCH":
            req.verb = "patch"
        elif method == "DELETE":
            req.verb = "delete" if req.name else "deletecollection"
        if req.verb in ("update", "patch", "delete") and not req.name:
            return None
        if legacy_watch and method != "GET":
            return None
        if req.verb in ("list", "watch") and not req.name and self.k8s_version != "1.7":
            # 1.11+ (kubernetes#63469): fieldSelector=metadata.name=x names the request for
            # authorization, so resourceNames rules can allow it. 1.7 authorizes it without a name.
            name = selectors.exact_name(query.get("fieldSelector"))
            if name and "/" not in name and name not in (".", ".."):
                req.name = name
        return req

    def _discovery(self, path: str, h) -> dict | None:
        host = h.headers.get("Host") or self.url.split("//", 1)[-1]
        return discovery.document(path, self.k8s_version, host)

    def _authorize(self, user: User, verb: str, rt: ResourceType, subresource: str, name: str, ns: str):
        if not self.authorizer.allowed(user, verb, rt.group, rt.name, subresource, name, ns):
            message = forbidden_message(self.k8s_version, user, verb, rt.group, rt.name, subresource, name, ns)
            if self.k8s_version == "1.7":
                # 1.7's authorization filter (responsewriters.Forbidden) wrote text/plain, not a
                # Status: clients then report `... (get pods)`. RBAC gave no reason, so no suffix.
                raise errors.PlainError(403, message.split(" is forbidden: ", 1)[1])
            raise errors.forbidden(rt.name, rt.group, name, message)
