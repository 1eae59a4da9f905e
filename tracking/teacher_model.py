"""The teacher as an MLflow pyfunc model *from code*: MLflow stores this file, not a pickled object.

Logged by the teacher stage (``tasks.teacher``) with the weights (``model.safetensors``) and
``model.json`` as artifacts and the ``kdprune`` core package as code, and registered in MLflow's
Model Registry, one version per retrain. Load it anywhere with MLflow and torch installed:

    model = mlflow.pyfunc.load_model("models:/kdprune-teacher-digits/latest")
    logits = model.predict(images)   # uint8 array [N, C, H, W] (or floats in [0, 1]) -> float32 logits [N, classes]

The model normalises its input as training did (uint8 / 255, then the dataset's per-channel mean
and std, from the ``input`` artifact).
"""
from __future__ import annotations

import json

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class TeacherModel(PythonModel):
    def load_context(self, context) -> None:
        import torch
        from safetensors.torch import load_file

        from kdprune.models import build_model

        info = json.loads(open(context.artifacts["model_json"]).read())
        self.model = build_model(info["arch"], info["in_channels"], info["num_classes"], info["image_size"])
        self.model.load_state_dict(load_file(context.artifacts["weights"]))
        self.model.eval()
        norm = json.loads(open(context.artifacts["input"]).read())
        self.mean = torch.tensor(norm["mean"], dtype=torch.float32)[None, :, None, None]
        self.std = torch.tensor(norm["std"], dtype=torch.float32)[None, :, None, None]
        self.torch = torch

    def predict(self, context, model_input, params=None) -> np.ndarray:
        torch = self.torch
        x = np.asarray(model_input)
        x = torch.from_numpy(x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32))
        x = (x - self.mean) / self.std
        with torch.no_grad():
            return self.model(x).float().numpy()


mlflow.models.set_model(TeacherModel())
