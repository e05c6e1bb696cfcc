"""The one place that talks to MLflow. Metrics are logged in batches (one call per epoch)."""

from __future__ import annotations

import logging
import os
import platform
import posixpath
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipeline.config import MlflowConfig
from pipeline.evaluation.lineage import git_info

logger = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000
MAX_KEY_LENGTH = 250  # MLflow's limit on metric, param and tag keys
_KEY_CHARS = re.compile(r"[^\w.\- /]")  # what MLflow admits in a key on every platform


def tracking_uri(cfg: MlflowConfig) -> str:
    """``MLFLOW_TRACKING_URI`` from the environment if set, else the configured one."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri


#: query parameters whose value is a credential (``?token=...``, ``?X-Amz-Signature=...``, ``?password=...``)
_SECRET_PARAM = re.compile(r"token|key|secret|passw|pwd|auth|sig|credential|session|code", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """``uri`` without credentials: no ``user:password@``, and secret-looking query values replaced.

    Every URI the pipeline stores (model.json, MLflow params, the report), logs or prints goes through here;
    the URI with its credentials is only ever handed to MLflow to connect.
    """
    uri = str(uri)
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    netloc = parts.netloc.rpartition("@")[2]
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret = [k for k, _ in pairs if _SECRET_PARAM.search(k)]
    if netloc == parts.netloc and not secret:
        return uri
    query = urlencode([(k, "REDACTED" if k in secret else v) for k, v in pairs], safe="/:")
    head = f"{parts.scheme}:" if parts.scheme else ""
    if parts.netloc or uri[len(head) :].startswith("//"):
        head += "//"
    tail = f"?{query}" if query else ""
    return f"{head}{netloc}{parts.path}{tail}" + (f"#{parts.fragment}" if parts.fragment else "")


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict (``to_dict(cfg)``) with the tracking URI's credentials removed, for storing or logging."""
    mlflow_cfg = config.get("mlflow")
    if not isinstance(mlflow_cfg, dict) or not mlflow_cfg.get("tracking_uri"):
        return config
    return {**config, "mlflow": {**mlflow_cfg, "tracking_uri": redact_uri(mlflow_cfg["tracking_uri"])}}


def environment_tags(device: str, threads: int) -> dict[str, str]:
    """Versions, device, threads and the git commit (:func:`~pipeline.evaluation.lineage.git_info`)."""
    import monai
    import torch

    return {
        "env.python": platform.python_version(),
        "env.torch": torch.__version__,
        "env.monai": monai.__version__,
        "env.mlflow": mlflow.__version__,
        "env.platform": platform.platform(),
        "env.device": device,
        "env.threads": str(threads),
        **git_info(),
    }


def mlflow_keys(names: list[str]) -> dict[str, str]:
    """A valid, distinct MLflow key for each name (metric names carry label names, tags carry paths).

    Characters MLflow refuses in a key (``(``, ``+``, ``$``, ...) become ``_``, as does ``/`` where the key
    would read as another path (``a//b``, ``../x``); the result is cut to MLflow's length limit, and a key
    that two names would share gets ``_2``, ``_3``, ... Valid names are kept as they are, so the usual keys
    (``val_dice_mean``, ``test.organ.dice.mean``) do not change.
    """
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        key = _KEY_CHARS.sub("_", str(name))
        norm = posixpath.normpath(key)
        if norm != key or norm.startswith((".", "/")):
            key = "_" + key.replace("/", "_")
        key = key[:MAX_KEY_LENGTH]
        base, n = key, 1
        while key in taken:
            n += 1
            key = f"{base[: MAX_KEY_LENGTH - len(str(n)) - 1]}_{n}"
        taken.add(key)
        out[name] = key
    return out


class Tracker:
    """A thin wrapper over one MLflow run.

    ``uri`` is the tracking URI without credentials (safe to store, log and print); ``connection_uri``
    is the one MLflow connects with and is never written anywhere.
    """

    def __init__(self, client: MlflowClient, run_id: str, uri: str) -> None:
        self.client, self.run_id, self.connection_uri = client, run_id, uri
        self.uri = redact_uri(uri)

    def log_params(self, params: dict[str, Any]) -> None:
        keys = mlflow_keys(list(params))
        items = [Param(keys[k], str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        ts = int(time.time() * 1000)
        keys = mlflow_keys(list(metrics))
        items = [Metric(keys[k], float(v), ts, step or 0) for k, v in metrics.items() if v is not None and v == v]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: dict[str, Any]) -> None:
        keys = mlflow_keys(list(tags))
        self.client.log_batch(self.run_id, tags=[RunTag(keys[k], str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_table(self, frame: Any, artifact_file: str) -> None:
        mlflow.log_table(frame, artifact_file=artifact_file, run_id=self.run_id)


@contextmanager
def run(
    cfg: MlflowConfig, run_id: str | None = None, run_name: str | None = None, tags: dict[str, str] | None = None
) -> Iterator[Tracker]:
    """Open a new run, or reopen ``run_id`` if the tracking store has it; end it (FINISHED or FAILED) on exit."""
    uri = tracking_uri(cfg)
    if redact_uri(uri) != uri:  # MLflow prints "View run at <host>" for HTTP stores, host credentials included
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    if run_id is not None:
        try:
            client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            logger.warning("run %s not found in %s: starting a new run linked to it by tag", run_id, redact_uri(uri))
            tags = {**(tags or {}), "train_run_id": run_id}
            run_id = None
    if run_id is None:
        exp = client.get_experiment_by_name(cfg.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(cfg.experiment)
        run_id = client.create_run(exp_id, run_name=run_name, tags=tags or {}).info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
        if tags:
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    tracker = Tracker(client, run_id, uri)
    try:
        yield tracker
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")


def register_model(
    uri: str, name: str, run_id: str, tags: dict[str, Any], artifact: str = "model"
) -> mlflow.entities.model_registry.ModelVersion | None:
    """Register the model ``artifact`` logged on ``run_id`` as a version of ``name``, with ``tags`` on the version.

    A version already registered from that run gets the new tags instead of a second version, so
    re-evaluating one training run does not multiply versions. None when the run logged no such model.
    """
    client = MlflowClient(uri)
    keys = mlflow_keys(list(tags))  # tag keys carry label names: the same rules as metric keys
    tags = {keys[k]: str(v) for k, v in tags.items()}
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        version = max(existing, key=lambda v: int(v.version))
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
    else:
        experiment = client.get_run(run_id).info.experiment_id
        where = f"source_run_id = '{run_id}' AND name = '{artifact}'"
        logged = client.search_logged_models([experiment], filter_string=where, max_results=1)
        if not logged:
            logger.warning("run %s logged no model %r: not registered", run_id, artifact)
            return None
        try:
            client.get_registered_model(name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(name)
        model = logged[0]
        version = client.create_model_version(
            name, model.model_uri, run_id=run_id, tags=tags, model_id=model.model_id, await_creation_for=0
        )
    logger.info("registered as models:/%s/%s", name, version.version)
    return client.get_model_version(name, version.version)
