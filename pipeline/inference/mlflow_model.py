"""The trained model folder as an MLflow ``pyfunc`` model.

:func:`log_model_folder` logs a model folder (``model.pt`` + ``model.json``) to an existing run,
together with the ``pipeline`` package (``code_paths``), so ``mlflow.pyfunc.load_model(uri)`` works
without this repository. Loading goes through :class:`pipeline.inference.predictor.Predictor` (weights loaded
with ``weights_only=True``, checksum checked), so the predictions are those of ``pipeline.tools.predict``.

``model.predict(paths)`` takes a list of scan paths (any format ``pipeline.tools.predict`` reads) and
returns one uint8 label map per scan, on the scan's own voxel grid. The type hint (``list[str]``) is
MLflow's input schema: it checks inputs and ``mlflow models serve`` accepts ``{"inputs": [paths]}``.
A scan held only in memory is saved (e.g. with nibabel, with its affine) before being passed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.pyfunc import PythonModel

from pipeline.inference.model_folder import META, POSTPROCESSING, WEIGHTS, load_model_folder

logger = logging.getLogger(__name__)

ARTIFACT = "model_folder"
#: the model logged again by evaluation with the keep-largest-component choice made out of fold (what it registers)
POSTPROCESSED = "model_postprocessed"
# "models from code": MLflow stores and runs this instead of a cloudpickle of the Python object
MODEL_CODE = """import mlflow

from pipeline.inference.mlflow_model import SegmentationModel

mlflow.models.set_model(SegmentationModel())
"""


class SegmentationModel(PythonModel):
    """pyfunc wrapper: scans (paths or arrays) in, label maps on each scan's own grid out."""

    def load_context(self, context: Any) -> None:
        from pipeline.inference.predictor import Predictor

        self.predictor = Predictor(context.artifacts[ARTIFACT])

    # no return annotation: MLflow would derive an output schema from it, and it has none for arrays
    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None):
        """One label map (uint8 array, on the scan's grid) per scan path of ``model_input``."""
        from pipeline.core.cases import Case
        from pipeline.core.readers import strip_suffix

        paths = [Path(p) for p in model_input]
        return [self.predictor.predict(Case(strip_suffix(p.name), (p,))).labels for p in paths]


@contextmanager
def _no_artifact_progress_bar() -> Iterator[None]:
    """MLflow draws a progress bar for the few files it re-reads while logging a model: not a long loop."""
    key = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _requirements() -> list[str]:
    import importlib.metadata as md

    out = []
    for dist in ("torch", "monai", "nibabel", "SimpleITK", "numpy", "scipy", "pandas", "pyyaml", "tqdm", "mlflow"):
        try:
            out.append(f"{dist}=={md.version(dist).split('+')[0]}")
        except md.PackageNotFoundError:
            out.append(dist)
    return out


def log_model_folder(
    run_id: str,
    folder: str | Path,
    name: str = "model",
    tracking_uri: str | None = None,
    postprocessing: Path | None = None,
) -> str:
    """Log ``folder`` as a pyfunc model to the existing run ``run_id``; returns the model URI.

    The folder is checked first (it must load). ``postprocessing``: a ``postprocessing.json`` logged inside the
    model folder, so the logged model applies it as ``predict --model`` does. The run's status is left as it was.
    """
    folder = Path(folder)
    load_model_folder(folder, "cpu")  # refuse a folder whose files do not match before logging it
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    status = client.get_run(run_id).info.status
    active = mlflow.active_run()
    with tempfile.TemporaryDirectory(prefix="model-folder-") as tmp:
        clean = Path(tmp) / folder.name
        clean.mkdir()
        for f in (WEIGHTS, META):  # only the model files, not whatever else lies in the folder
            shutil.copy2(folder / f, clean / f)
        if postprocessing is not None:
            shutil.copy2(postprocessing, clean / POSTPROCESSING)
        code = Path(tmp) / "segmentation_model.py"
        code.write_text(MODEL_CODE)
        kwargs = {
            "name": name,
            "python_model": str(code),
            "artifacts": {ARTIFACT: str(clean)},
            "code_paths": [str(Path(__file__).resolve().parents[1])],  # the whole pipeline package
            "pip_requirements": _requirements(),
        }
        with _no_artifact_progress_bar():
            if active is not None and active.info.run_id == run_id:
                info = mlflow.pyfunc.log_model(**kwargs)
            else:
                with mlflow.start_run(run_id=run_id, nested=active is not None):
                    info = mlflow.pyfunc.log_model(**kwargs)
                client.update_run(run_id, status=status)
    logger.info("logged model folder %s to run %s as %s", folder, run_id, info.model_uri)
    return info.model_uri
