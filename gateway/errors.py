"""One error tree for the gateway.

Each class carries its HTTP status and the OpenAI ``type``/``code`` it is reported with, so the
error middleware turns any of them into ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SluiceError(Exception):
    """Base of every error the gateway reports to a client."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class InvalidRequest(SluiceError):
    status = 400
    error_type = "invalid_request_error"


class Unauthorized(SluiceError):
    """No valid credentials: says how to authenticate, as RFC 9110 asks of a 401."""

    status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"

    def __init__(self, message: str, *, realm: str = "sluice") -> None:
        super().__init__(message, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'})


class AdminDisabled(SluiceError):
    status = 403
    error_type = "permission_error"
    code = "admin_disabled"


class KeysRequired(SluiceError):
    """The gateway listens beyond loopback, and no client key exists to check callers with."""

    status = 403
    error_type = "permission_error"
    code = "client_keys_required"


class ModelNotPermitted(SluiceError):
    status = 403
    error_type = "permission_error"
    code = "model_not_permitted"


class SloNotPermitted(SluiceError):
    """The request asks for a tighter objective, or a class, than its tenant may."""

    status = 403
    error_type = "permission_error"
    code = "slo_not_permitted"


class KeyNotFound(SluiceError):
    status = 404
    error_type = "invalid_request_error"
    code = "key_not_found"


class ModelNotFound(SluiceError):
    status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class RouteNotFound(SluiceError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(SluiceError):
    status = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


class BackendNotFound(SluiceError):
    status = 404
    error_type = "invalid_request_error"
    code = "backend_not_found"


class BackendExists(SluiceError):
    status = 409
    error_type = "conflict"
    code = "backend_exists"


class TenantNotFound(SluiceError):
    status = 404
    error_type = "invalid_request_error"
    code = "tenant_not_found"


class ClassNotFound(SluiceError):
    status = 404
    error_type = "invalid_request_error"
    code = "slo_class_not_found"


class PoolNotFound(SluiceError):
    status = 404
    error_type = "invalid_request_error"
    code = "pool_not_found"


class AdapterNotFound(SluiceError):
    status = 404
    error_type = "invalid_request_error"
    code = "adapter_not_found"


class ClassInUse(SluiceError):
    status = 409
    error_type = "conflict"
    code = "slo_class_in_use"


class StaleConfig(SluiceError):
    """A config write named a version that is no longer current."""

    status = 409
    error_type = "conflict"
    code = "stale_version"


class RetrainRunning(SluiceError):
    status = 409
    error_type = "conflict"
    code = "retrain_running"


class PreconditionRequired(SluiceError):
    status = 428
    error_type = "invalid_request_error"
    code = "if_match_required"


class RequestTimeout(SluiceError):
    """The client did not send its request in time."""

    status = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class ContextLengthExceeded(SluiceError):
    """Prompt plus reply cannot fit any backend serving the model."""

    status = 400
    error_type = "invalid_request_error"
    code = "context_length_exceeded"


class PayloadTooLarge(SluiceError):
    status = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class SloUnattainable(SluiceError):
    """The latency objective cannot be met; ``reason`` says which guard decided."""

    status = 429
    error_type = "slo_unattainable"
    code = "slo_unattainable"

    def __init__(self, message: str, *, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.reason = reason


class RateLimited(SluiceError):
    """A tenant's rate limit. ``kind`` is OpenAI's error type for it: ``requests`` or
    ``tokens``; ``reason`` which limit refused (requests, tokens, concurrent, too_large)."""

    status = 429
    error_type = "requests"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        reason: str,
        code: str = "rate_limit_exceeded",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.kind, self.reason, self.limit_code = kind, reason, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.limit_code)


class UpstreamError(SluiceError):
    status = 502
    error_type = "upstream_error"
    code = "bad_gateway"


class NoBackendAvailable(SluiceError):
    status = 503
    error_type = "service_unavailable"
    code = "no_backend_available"


class SharedStateUnavailable(SluiceError):
    """The shared store cannot be reached: config writes wait until it is back."""

    status = 503
    error_type = "service_unavailable"
    code = "shared_state_unavailable"


class UpstreamTimeout(SluiceError):
    status = 504
    error_type = "upstream_timeout"
    code = "gateway_timeout"
