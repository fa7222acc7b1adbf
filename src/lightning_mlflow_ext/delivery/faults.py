"""What a failed write to the tracking store means, decided in one place: retry it, stop the run's delivery,
refuse one record, or treat it as a bug of this package.

Every caller (the metrics writer, uploads, the server check, ``lightning-mlflow sync``) asks here.
"""

from __future__ import annotations

import email.utils
import enum
import http.client
import json
import os
import re
import ssl
import time
from collections.abc import Mapping

import requests
from mlflow.exceptions import MlflowException


class Fault(enum.Enum):
    """The right response to a failed write."""

    #: The store is briefly unable (down, restarting, overloaded): keep the write, retry with backoff, in order.
    TRANSIENT = "transient"
    #: Nothing for this run can succeed until a person acts (credentials, a deleted run, an untrusted
    #: certificate): stop sending, keep everything in the journal, say once what to do.
    RUN_WIDE = "run-wide"
    #: This record is wrong (an invalid value, a changed param): report it by name, deliver the rest.
    ONE_RECORD = "one record"
    #: An exception that is neither the network nor MLflow: this package's own bug.
    BUG = "bug"


class DeliveryError(Exception):
    """A write did not reach the store, and what that means."""

    def __init__(
        self,
        message: str,
        fault: Fault,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        advice: str = "",
    ) -> None:
        super().__init__(message)
        self.fault = fault
        self.status = status
        self.retry_after = retry_after
        self.advice = advice

    @property
    def transient(self) -> bool:
        return self.fault is Fault.TRANSIENT


#: MLflow error codes a retry can cure.
_TRANSIENT_CODES = frozenset(
    {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED"}
)
#: MLflow error codes that refuse the credentials, not the record.
_CREDENTIAL_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "UNAUTHORIZED"})
#: A store's words for "this run (or its experiment) is gone": nothing more can be written into it.
_RUN_GONE = re.compile(r"must be in the 'active' state|Run with id=\S+ not found|No Experiment with id", re.I)
_DATABASE_TROUBLE = re.compile(r"sqlalchemy|QueuePool|connection (was )?closed|could not connect|PendingRollback", re.I)
_RUN_GONE_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "INVALID_STATE"})


def credential_advice(tracking_uri: str, status: int | None = None) -> str:
    """What to set when a server refuses the credentials: the variables that apply, never their values."""
    have_user = bool(os.environ.get("MLFLOW_TRACKING_USERNAME"))
    have_password = bool(os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    have_token = bool(os.environ.get("MLFLOW_TRACKING_TOKEN"))
    auth = os.environ.get("MLFLOW_TRACKING_AUTH")
    if status == 403:
        who = os.environ.get("MLFLOW_TRACKING_USERNAME") or "this user"
        return (
            f"The credentials are valid but {who} may not write here: ask the server's admin for EDIT permission "
            "on the experiment, or set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
            "to an account that has it"
        )
    if auth:
        return (
            f"MLFLOW_TRACKING_AUTH={auth} names the auth plugin that signs requests: check the credentials it "
            "reads, or unset it and set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN"
        )
    if have_token:
        return "MLFLOW_TRACKING_TOKEN is set but refused (expired or revoked?): set a valid token"
    if have_user or have_password:
        missing = [name for name, have in (("USERNAME", have_user), ("PASSWORD", have_password)) if not have]
        if missing:
            return f"set MLFLOW_TRACKING_{missing[0]} too (MLFLOW_TRACKING_USERNAME and _PASSWORD go together)"
        return "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD are set but refused: set the right (or new) password"
    return (
        f"{tracking_uri} asks for credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
        "or MLFLOW_TRACKING_TOKEN"
    )


TLS_ADVICE = (
    "set MLFLOW_TRACKING_SERVER_CERT_PATH to the CA bundle that signed the server's certificate (a private CA), "
    "or MLFLOW_TRACKING_INSECURE_TLS=true to skip verification"
)


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) in seconds, capped at five minutes."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = moment.timestamp() - time.time()
    return min(max(seconds, 0.0), 300.0)


def classify_response(
    tracking_uri: str, status: int, text: str, headers: Mapping[str, str] | None = None
) -> DeliveryError:
    """The fault an HTTP answer other than 200 means."""
    code, message = "", text[:500]
    try:
        body = json.loads(text)
        if isinstance(body, dict):
            code = str(body.get("error_code", ""))
            message = str(body.get("message", message))[:500]
    except ValueError:
        pass
    where = f"HTTP {status} from {tracking_uri}" + (f" ({code})" if code else "")
    if status in (401, 403) or code in _CREDENTIAL_CODES:
        advice = credential_advice(tracking_uri, status)
        message = f"{where}: the server refused the credentials"
        return DeliveryError(message, Fault.RUN_WIDE, status=status, advice=advice)
    if status == 429 or status >= 500 or code in _TRANSIENT_CODES:
        wait = retry_after_seconds((headers or {}).get("Retry-After"))
        return DeliveryError(f"{where}: {message}", Fault.TRANSIENT, status=status, retry_after=wait)
    if code == "BAD_REQUEST" and _DATABASE_TROUBLE.search(message):
        # MLflow reports most database errors (a full connection pool, a dropped connection) as a bad request.
        return DeliveryError(f"{where}: {message}", Fault.TRANSIENT, status=status)
    if code in _RUN_GONE_CODES and _RUN_GONE.search(message):
        advice = "restore the run or its experiment (`mlflow runs restore`, `mlflow experiments restore`)"
        return DeliveryError(f"{where}: {message}", Fault.RUN_WIDE, status=status, advice=advice)
    if status == 404 and not code:
        advice = f"check the tracking URI: {tracking_uri} answers, but not as an MLflow server"
        return DeliveryError(f"{where}: {message}", Fault.RUN_WIDE, status=status, advice=advice)
    return DeliveryError(f"{where}: {message}", Fault.ONE_RECORD, status=status)


def classify_exception(tracking_uri: str, exc: BaseException) -> DeliveryError:
    """The fault an exception raised while writing means."""
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError) or (
        # requests, and MLflow's client around it, carry the verification failure as text only
        isinstance(exc, (requests.exceptions.SSLError, MlflowException)) and "CERTIFICATE_VERIFY_FAILED" in str(exc)
    ):
        return DeliveryError(
            f"{tracking_uri}: the server's TLS certificate is not trusted ({exc})", Fault.RUN_WIDE, advice=TLS_ADVICE
        )
    closed = (ssl.SSLZeroReturnError, ssl.SSLEOFError, ssl.SSLSyscallError)  # the peer went away: transient
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, closed):
        advice = TLS_ADVICE + "; or the URI says https where the server speaks plain http"
        return DeliveryError(f"{tracking_uri}: TLS failed ({exc})", Fault.RUN_WIDE, advice=advice)
    if isinstance(exc, MlflowException):
        return _classify_mlflow(tracking_uri, exc)
    if isinstance(exc, PermissionError):
        advice = f"this process may not write to {exc.filename or 'the artifact location'}: fix its permissions"
        return DeliveryError(f"{tracking_uri}: {exc}", Fault.RUN_WIDE, advice=advice)
    cloud = _cloud_fault(tracking_uri, exc)
    if cloud is not None:
        return cloud
    if isinstance(exc, (OSError, http.client.HTTPException, requests.RequestException, TimeoutError)):
        return DeliveryError(f"{tracking_uri} unreachable: {type(exc).__name__}: {exc}", Fault.TRANSIENT)
    if type(exc).__module__.split(".")[0] in ("sqlalchemy", "sqlite3", "psycopg", "psycopg2", "pymysql"):
        # A locked SQLite file, a dropped database connection: the store's, and worth another try.
        return DeliveryError(f"{tracking_uri}: {type(exc).__name__}: {exc}", Fault.TRANSIENT)
    return DeliveryError(f"{type(exc).__name__}: {exc}", Fault.BUG)


def _classify_mlflow(tracking_uri: str, exc: MlflowException) -> DeliveryError:
    code = str(exc.error_code)
    try:
        status = int(exc.get_http_status_code())  # type: ignore[no-untyped-call]
    except (TypeError, ValueError):
        status = 500
    if code in _CREDENTIAL_CODES:
        status = 403 if code == "PERMISSION_DENIED" else 401
    text = json.dumps({"error_code": code, "message": exc.message})
    return classify_response(tracking_uri, status, text)


#: Cloud storage SDKs (artifacts on S3, GCS, Azure) raise their own exceptions, none an OSError.
_CLOUD_MODULES = frozenset({"botocore", "boto3", "s3transfer", "google", "azure"})
_CLOUD_CREDENTIAL_CODES = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "AuthorizationFailure",
        "AuthenticationFailed",
    }
)


def _cloud_fault(tracking_uri: str, exc: BaseException) -> DeliveryError | None:
    """A cloud SDK's error, judged by its HTTP status and error code: refused credentials are run-wide,
    everything else (throttling, 5xx, a dropped connection) is transient."""
    if type(exc).__module__.split(".")[0] not in _CLOUD_MODULES:
        return None
    response = getattr(exc, "response", None)
    status: object = getattr(exc, "status_code", None) or getattr(exc, "code", None)
    code = ""
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", status)
        code = str(response.get("Error", {}).get("Code", ""))
    if status in (401, 403) or code in _CLOUD_CREDENTIAL_CODES:
        advice = (
            "the artifact store refused the cloud credentials: renew them (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, "
            "AZURE_STORAGE_*)"
        )
        return DeliveryError(f"{tracking_uri}: {type(exc).__name__}: {exc}", Fault.RUN_WIDE, advice=advice)
    return DeliveryError(f"{tracking_uri}: {type(exc).__name__}: {exc}", Fault.TRANSIENT)
