"""Errors a user of the logger can hit.

Each message says what happened and what to do about it.
"""

from __future__ import annotations


class LightningMLflowError(Exception):
    """Base class of every error this package raises on purpose."""


class RunNotFoundError(LightningMLflowError):
    """The run named by ``run_id`` or ``MLFLOW_RUN_ID`` is not in the tracking store."""


class DeletedRunError(LightningMLflowError):
    """The run to attach to is in the trash."""


class DeletedExperimentError(LightningMLflowError):
    """An experiment with the requested name exists but is deleted."""


class TrackingServerUnavailableError(LightningMLflowError):
    """The tracking server did not answer within the wait the logger allows."""


class WriteRefusedError(LightningMLflowError):
    """With ``synchronous=True``: the tracking store refused a write (an invalid name or value)."""


class InvalidArtifactPathError(LightningMLflowError, ValueError):
    """An artifact name that is absolute, climbs out with ``..``, or has characters MLflow can't store."""


class CredentialsRefusedError(LightningMLflowError):
    """The tracking server refused the credentials (HTTP 401/403); the message names the variables to set."""


class UntrustedCertificateError(LightningMLflowError):
    """The tracking server's TLS certificate is not trusted; the message says how to trust it."""


class JournalCorruptError(LightningMLflowError):
    """A journal file whose first line is not a journal header: there is no telling which run it belongs to."""


class JournalInUseError(LightningMLflowError):
    """A live process holds the journal file; ``lightning-mlflow sync`` must wait until it exits."""
