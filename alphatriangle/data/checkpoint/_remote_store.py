"""The artifact store of one MLflow run, reached with bounded requests: each request our
uploader makes is one attempt with its own timeout, so that retrying (ours, with backoff)
and the deadline of ``close`` stay in our hands whatever the client settings are.

- A run whose artifacts live in S3 (a non-proxied server, ``--default-artifact-root
  s3://...``): the client writes to S3 itself, through MLflow's S3 repository with a
  boto3 client of our own: ``connect_timeout`` and ``read_timeout`` of ``timeout_s``,
  one attempt (botocore's retries off), the endpoint, TLS and addressing settings MLflow
  reads (``MLFLOW_S3_ENDPOINT_URL``, ``MLFLOW_S3_IGNORE_TLS``,
  ``MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE``), credentials and region from boto3's usual
  chain (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, profiles,
  instance roles). Uploads run on the calling thread, not a transfer pool, so that a
  request left running at exit holds nothing up.
- Any other run (a proxied server's ``mlflow-artifacts:``, a local store, GCS, Azure):
  MLflow's client. Its HTTP requests read ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and
  ``MLFLOW_HTTP_REQUEST_TIMEOUT`` from the environment at each call; :func:`bound_mlflow_http`
  sets them for the process (no nested retries, our timeout) unless the user set them.

Cost: one ``get_run`` per run to learn where its artifacts live; boto3 is imported only
for a run in S3.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import Any

__all__ = ["RunArtifacts", "bound_mlflow_http", "resolve_run_id"]

logger = logging.getLogger(__name__)

_HTTP_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
_HTTP_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
_env_lock = threading.Lock()


def bound_mlflow_http(timeout_s: float) -> None:
    """MLflow's HTTP client in this process: no retries of its own, ``timeout_s`` per
    request (rounded up to whole seconds, as MLflow reads it). A value already in the
    environment is the user's and is kept."""
    with _env_lock:
        given = [name for name in (_HTTP_RETRIES, _HTTP_TIMEOUT) if name in os.environ]
        os.environ.setdefault(_HTTP_RETRIES, "0")
        os.environ.setdefault(_HTTP_TIMEOUT, str(max(1, math.ceil(timeout_s))))
    if given:
        logger.info(
            "MLflow sync: keeping %s as set in the environment (close's deadline holds "
            "either way: it stops waiting for a request past it)",
            ", ".join(f"{name}={os.environ[name]}" for name in given),
        )


def _bounded_s3_client(timeout_s: float) -> Any:
    import boto3  # type: ignore[import-untyped,unused-ignore]
    from botocore.config import Config  # type: ignore[import-untyped,unused-ignore]

    signature: Any = os.environ.get("MLFLOW_EXPERIMENTAL_S3_SIGNATURE_VERSION", "s3v4")
    if signature.lower() == "unsigned":
        from botocore import UNSIGNED  # type: ignore[import-untyped,unused-ignore]

        signature = UNSIGNED
    config = Config(
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"total_max_attempts": 1, "mode": "standard"},
        signature_version=signature,
        s3={"addressing_style": os.environ.get("MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE", "auto")},
    )
    client = boto3.session.Session().client(
        "s3",
        config=config,
        endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None,
        verify=False if _ignore_tls() else None,
    )
    return _UploadsOnCallingThread(client)


class _UploadsOnCallingThread:
    """A boto3 S3 client whose ``upload_file`` runs on the calling thread (the uploader's
    daemon thread) instead of a transfer pool: the interpreter joins pool threads at exit,
    so an upload left running by ``close`` would hold the process up."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upload_file(self, *args: Any, **kwargs: Any) -> Any:
        from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped,unused-ignore]

        kwargs.setdefault("Config", TransferConfig(use_threads=False))
        return self._client.upload_file(*args, **kwargs)


def _ignore_tls() -> bool:
    """``MLFLOW_S3_IGNORE_TLS`` read as MLflow reads it."""
    return os.environ.get("MLFLOW_S3_IGNORE_TLS", "false").strip().lower() in ("true", "1")


def _s3_repository(artifact_uri: str, timeout_s: float) -> Any:
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

    client = _bounded_s3_client(timeout_s)

    class BoundedS3ArtifactRepository(S3ArtifactRepository):
        def _get_s3_client(self) -> Any:  # MLflow's hook for the client of each call
            return client

    return BoundedS3ArtifactRepository(artifact_uri)


class RunArtifacts:
    """List, upload and download the artifacts of one run (paths relative to its root)."""

    def __init__(self, client: Any, run_id: str, timeout_s: float) -> None:
        self.run_id = run_id
        self._client = client
        artifact_uri = str(client.get_run(run_id).info.artifact_uri)
        self._repository = (
            _s3_repository(artifact_uri, timeout_s) if artifact_uri.startswith("s3://") else None
        )
        self.artifact_uri = artifact_uri

    def list(self, path: str) -> list[Any]:
        if self._repository is not None:
            return list(self._repository.list_artifacts(path))
        return list(self._client.list_artifacts(self.run_id, path))

    def upload(self, local_file: str, path: str) -> None:
        if self._repository is not None:
            self._repository.log_artifact(local_file, path)
        else:
            self._client.log_artifact(self.run_id, local_file, path)

    def download(self, path: str, into: str) -> str:
        if self._repository is not None:
            return str(self._repository.download_artifacts(path, into))
        return str(self._client.download_artifacts(self.run_id, path, into))


def resolve_run_id(client: Any, options: Any) -> str:
    """The run of ``options`` (``MlflowSyncOptions``): its ``run_id``, else the active run,
    else the newest run named ``run_name`` in the experiment, else a new one."""
    run_id: str | None = options.run_id
    if run_id is None:
        import mlflow

        active = mlflow.active_run()
        if active is not None:
            run_id = str(active.info.run_id)
    if run_id is not None:
        return run_id
    experiment_id = "0"
    if options.experiment_name:
        found = client.get_experiment_by_name(options.experiment_name)
        experiment_id = (
            found.experiment_id
            if found is not None
            else client.create_experiment(
                options.experiment_name,
                artifact_location=options.artifact_location,
            )
        )
    if options.run_name:  # a run of this name already there: resume into it
        quoted = options.run_name.replace("\\", "\\\\").replace("'", "\\'")
        existing = client.search_runs(
            [experiment_id],
            filter_string=f"attributes.run_name = '{quoted}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if existing:
            return str(existing[0].info.run_id)
    return str(client.create_run(experiment_id, run_name=options.run_name).info.run_id)
