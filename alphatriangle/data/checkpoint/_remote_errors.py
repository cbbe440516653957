"""Which remote-store failures are worth retrying: one classifier for every store MLflow
speaks to (its tracking server, S3 and S3-compatible stores, Google Cloud Storage, Azure).

A failure is judged by its type and its error code, never by its message text: connection
errors and timeouts of the standard library, urllib3, requests and botocore; S3 error codes
500, 502, 503, 504, ``InternalError``, ``ServiceUnavailable``, ``SlowDown``,
``RequestTimeout`` and ``Throttling*``; Google Cloud's ``ServiceUnavailable``,
``InternalServerError``, ``TooManyRequests``, ``DeadlineExceeded`` and their kin; Azure's
``ServiceRequestError``, ``ServiceResponseError`` and ``HttpResponseError`` with a 5xx or
429; MLflow's own exceptions with HTTP status 408, 429 or 5xx. Everything else, an
authentication failure (401, 403, ``InvalidAccessKeyId``, ``SignatureDoesNotMatch``,
``ExpiredToken``, missing credentials), ``NoSuchBucket``, a local file error, is permanent.

Stores wrap one another's errors (MLflow wraps botocore, boto3 wraps a ``ClientError``,
requests wraps urllib3): the chain of causes is walked and the innermost failure that can
be judged decides, so that an MLflow ``INTERNAL_ERROR`` around an S3 ``AccessDenied`` stays
permanent. The Google and Azure classes are recognised by module and class name, so none of
those packages needs to be installed. Cost: a walk of a few links, no import of a store.
"""

from __future__ import annotations

__all__ = ["describe", "is_transient"]

_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_S3_TRANSIENT_CODES = frozenset(
    {
        "500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
        "RequestTimeout", "RequestTimeoutException", "RequestLimitExceeded", "TooManyRequests",
        "PriorRequestNotComplete", "BandwidthLimitExceeded", "EC2ThrottledException",
    }
)  # fmt: skip
# By module prefix: the classes of that module (or their bases) that are transient or
# permanent whatever code they carry.
_TRANSIENT_CLASSES = {
    "builtins": {"ConnectionError", "TimeoutError"},
    "socket": {"timeout", "gaierror"},
    "urllib3.exceptions": {
        "ProtocolError", "TimeoutError", "NewConnectionError", "NameResolutionError",
        "IncompleteRead", "ProxyError", "ConnectionError",
    },
    "requests.exceptions": {"ConnectionError", "Timeout", "ChunkedEncodingError"},
    "botocore.exceptions": {
        "ConnectionError", "HTTPClientError", "ReadTimeoutError", "ConnectTimeoutError",
        "IncompleteReadError", "ResponseStreamingError",
    },
    "google.api_core.exceptions": {
        "ServiceUnavailable", "InternalServerError", "TooManyRequests", "DeadlineExceeded",
        "GatewayTimeout", "BadGateway", "Aborted", "RetryError",
    },
    "google.auth.exceptions": {"TransportError"},
    "azure.core.exceptions": {
        "ServiceRequestError", "ServiceResponseError", "ServiceRequestTimeoutError",
        "ServiceResponseTimeoutError", "IncompleteReadError",
    },
}  # fmt: skip
_PERMANENT_CLASSES = {
    "botocore.exceptions": {"NoCredentialsError", "PartialCredentialsError", "NoRegionError"},
    "google.api_core.exceptions": {"Unauthorized", "Forbidden", "NotFound", "BadRequest"},
    "google.auth.exceptions": {"DefaultCredentialsError", "RefreshError"},
    "azure.core.exceptions": {"ClientAuthenticationError", "ResourceNotFoundError"},
}


def _class_names(exc: BaseException, table: dict[str, set[str]]) -> bool:
    for cls in type(exc).__mro__:
        module = cls.__module__
        for prefix, names in table.items():
            if (module == prefix or module.startswith(prefix + ".")) and cls.__name__ in names:
                return True
    return False


def _s3_code(exc: BaseException) -> tuple[str, int | None] | None:
    """The error code and HTTP status of a botocore ``ClientError``; None for others."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict) or not any(
        c.__module__.startswith("botocore") and c.__name__ == "ClientError"
        for c in type(exc).__mro__
    ):
        return None
    error = response.get("Error") or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return str(error.get("Code", "")), status if isinstance(status, int) else None


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status a failure carries: requests' and Azure's responses, Google's
    ``code``, MLflow's error code mapped to its status."""
    names = {f"{c.__module__}.{c.__name__}" for c in type(exc).__mro__}
    if "requests.exceptions.HTTPError" in names:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        return status if isinstance(status, int) else None
    if "azure.core.exceptions.HttpResponseError" in names:
        status = getattr(exc, "status_code", None)
        return status if isinstance(status, int) else None
    if any(n.startswith("google.api_core.exceptions.") for n in names):
        status = getattr(exc, "code", None)
        return status if isinstance(status, int) else None
    if "mlflow.exceptions.MlflowException" in names:
        try:
            return int(exc.get_http_status_code())  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            return None
    return None


def _verdict(exc: BaseException) -> bool | None:
    """True: transient; False: permanent; None: this link alone cannot tell."""
    s3 = _s3_code(exc)
    if s3 is not None:
        code, status = s3
        if code in _S3_TRANSIENT_CODES or code.startswith("Throttl"):
            return True
        return status in _RETRYABLE_STATUS
    if _class_names(exc, _PERMANENT_CLASSES):
        return False
    if _class_names(exc, _TRANSIENT_CLASSES):
        return True
    status = _http_status(exc)
    if status is not None:
        return status in _RETRYABLE_STATUS
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, outermost first (each link once)."""
    links: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in links) and len(links) < 16:
        links.append(current)
        current = current.__cause__ or current.__context__
    return links


def _deciding(exc: BaseException) -> tuple[BaseException, bool]:
    """The innermost link that can be judged, and its verdict (permanent when none can)."""
    for link in reversed(_chain(exc)):
        verdict = _verdict(link)
        if verdict is not None:
            return link, verdict
    return exc, False


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is worth retrying (see the module docstring)."""
    return _deciding(exc)[1]


def describe(exc: BaseException) -> tuple[str, str]:
    """``(cause, text)``: a short key naming the kind of failure (the deciding class and its
    code, the same for every file that fails the same way: logs say it once), and a line
    for people (transient or permanent, the class, code and message)."""
    link, transient = _deciding(exc)
    cause = type(link).__name__
    s3 = _s3_code(link)
    status = _http_status(link)
    if s3 is not None:
        cause += f" {s3[0]}" if s3[0] else f" {s3[1]}"
    elif status is not None:
        cause += f" {status}"
    kind = "transient" if transient else "permanent"
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return cause, f"{kind}: {cause}: {message[:300]}"
