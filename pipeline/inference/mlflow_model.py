"""The trained model folder as an MLflow ``pyfunc`` model.

:func:`log_model_folder` logs a model folder (``model.pt`` + ``model.json``) to an existing run,
together with the ``pipeline`` package (``code_paths``), so ``mlflow.pyfunc.load_model(uri)`` works
without this repository. Loading goes through :class:`pipeline.inference.predictor.Predictor` (weights loaded
with ``weights_only=True``, checksum checked), so the predictions are those of ``pipeline.tools.predict``.

``model.predict(x)`` takes a scan path (str or Path), a dict ``{"image": array, "affine": 4x4}``
(affine optional, identity = 1 mm RAS), a bare 3D array, or a list of these, and returns the uint8
label map on the scan's grid (a list for a list).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import nibabel as nib
import numpy as np
from mlflow.pyfunc import PythonModel

from pipeline.inference.model_folder import META, WEIGHTS, load_model_folder

logger = logging.getLogger(__name__)

ARTIFACT = "model_folder"
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

    # model_input has no type hint on purpose: MLflow would turn one into an input schema and reshape inputs
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> Any:
        if isinstance(model_input, list | tuple):
            return [self._predict_one(x) for x in model_input]
        return self._predict_one(model_input)

    def _predict_one(self, item: Any) -> np.ndarray:
        from pipeline.core.dataset import Case, strip_suffix

        if isinstance(item, str | Path):
            path = Path(item)
            return self.predictor.predict(Case(strip_suffix(path.name), (path,))).labels
        if isinstance(item, dict):
            image, affine = np.asarray(item["image"]), np.asarray(item.get("affine", np.eye(4)), dtype=float)
        else:
            image, affine = np.asarray(item), np.eye(4)
        if image.ndim != 3:
            raise ValueError(f"expected a 3D array, got shape {image.shape}")
        with tempfile.TemporaryDirectory(prefix="pyfunc-") as tmp:
            path = Path(tmp) / "scan.nii.gz"
            nii = nib.Nifti1Image(image.astype(np.float32), affine)
            nii.set_sform(affine, 1)
            nii.set_qform(affine, 1)
            nib.save(nii, str(path))
            return self.predictor.predict(Case("scan", (path,))).labels


def _requirements() -> list[str]:
    import importlib.metadata as md

    out = []
    for dist in ("torch", "monai", "nibabel", "SimpleITK", "numpy", "scipy", "pandas", "pyyaml", "tqdm", "mlflow"):
        try:
            out.append(f"{dist}=={md.version(dist).split('+')[0]}")
        except md.PackageNotFoundError:
            out.append(dist)
    return out


def log_model_folder(run_id: str, folder: str | Path, name: str = "model", tracking_uri: str | None = None) -> str:
    """Log ``folder`` as a pyfunc model to the existing run ``run_id``; returns the model URI.

    The folder is checked first (it must load). The run's status is left as it was.
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
        code = Path(tmp) / "segmentation_model.py"
        code.write_text(MODEL_CODE)
        kwargs = {
            "name": name,
            "python_model": str(code),
            "artifacts": {ARTIFACT: str(clean)},
            "code_paths": [str(Path(__file__).resolve().parent)],
            "pip_requirements": _requirements(),
        }
        if active is not None and active.info.run_id == run_id:
            info = mlflow.pyfunc.log_model(**kwargs)
        else:
            with mlflow.start_run(run_id=run_id, nested=active is not None):
                info = mlflow.pyfunc.log_model(**kwargs)
            client.update_run(run_id, status=status)
    logger.info("logged model folder %s to run %s as %s", folder, run_id, info.model_uri)
    return info.model_uri
