"""Prometheus metrics of the initializer (default registry, served on /metrics).

Queue depth is the shared work queue's ``workqueue_depth{name="initializer"}``.
"""

from prometheus_client import Counter, Gauge, Histogram

DEPLOYMENTS = Counter(
    "tproxy_initializer_deployments_total",
    "Deployments whose initialization we completed, by outcome "
    "(initialized = injected, skipped = entry removed without injection, failed = result Status set)",
    ["outcome"],
)
WRITE_CONFLICTS = Counter(
    "tproxy_initializer_write_conflicts_total",
    "PUTs refused with 409 Conflict (stale resourceVersion); each one is re-read and redone",
)
WRITE_ERRORS = Counter("tproxy_initializer_write_errors_total", "Failed writes other than conflicts, by reason", ["reason"])
INIT_LATENCY = Histogram(
    "tproxy_initializer_initialization_seconds",
    "Time from a deployment's creationTimestamp (1 s resolution) to our completing write",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60),
)
CONFIG_RELOADS = Counter(
    "tproxy_initializer_config_reloads_total", "Injection configs loaded from the ConfigMap (changed content)"
)
CONFIG_ERRORS = Counter(
    "tproxy_initializer_config_errors_total",
    "ConfigMap reads that could not be used, by reason (missing, malformed, forbidden, error)",
    ["reason"],
)
CONFIG_LOADED = Gauge("tproxy_initializer_config_loaded", "1 when a valid injection config is loaded (else deployments wait)")
ROOT_CERTS_LOADED = Gauge(
    "tproxy_initializer_root_certs_loaded",
    "1 when the proxy's CA bundle (--root-certs-configmap) is read (else deployments to inject wait)",
)
ROOT_CERTS_ERRORS = Counter(
    "tproxy_initializer_root_certs_errors_total",
    "Reads of the CA bundle ConfigMap that could not be used, by reason (missing, malformed, forbidden, error)",
    ["reason"],
)
ROOT_CERTS_COPIES = Counter(
    "tproxy_initializer_root_certs_copies_total",
    "Copies of the CA bundle ensured in application namespaces, by outcome "
    "(created, updated, unchanged, refused = forbidden or name taken, error = retried)",
    ["outcome"],
)

# Webhook mode (python3 -m initializer webhook). Config, CA bundle and copy metrics are the ones above.
WEBHOOK_REVIEWS = Counter(
    "tproxy_initializer_webhook_reviews_total",
    "AdmissionReviews answered, by the reviewed object's kind, the operation and the outcome "
    "(injected = allowed with a patch, unchanged = already injected, skipped = not opted in or excluded, "
    "ignored = not a kind/operation we mutate, kept = carries our init containers from another config version, "
    "denied = allowed: false with a Status)",
    ["kind", "operation", "outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "tproxy_initializer_webhook_review_seconds",
    "Time to decide one review and build its answer (body read and TLS excluded)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
WEBHOOK_BAD_REQUESTS = Counter(
    "tproxy_initializer_webhook_bad_requests_total",
    "Requests answered with an HTTP error instead of a review, by reason "
    "(malformed, too_large, length_required, truncated, content_type, not_found, method)",
    ["reason"],
)
WEBHOOK_CERT_RELOADS = Counter(
    "tproxy_initializer_webhook_certificate_reloads_total", "Serving certificate/key pairs reloaded after a change"
)
WEBHOOK_CERT_ERRORS = Counter(
    "tproxy_initializer_webhook_certificate_errors_total",
    "Changed serving certificate/key files that could not be loaded (the last good pair stays in use)",
)
WEBHOOK_CERT_LOADED = Gauge(
    "tproxy_initializer_webhook_certificate_loaded_timestamp_seconds",
    "When the serving certificate in use was loaded (Unix time)",
)
