"""Inputs of the joint selectors from a trained model (the teacher): features, probabilities,
per-example last-layer gradients, validation data.

Last-layer gradients in closed form: for logits z = W h + b and cross-entropy loss,
dL/db = p - y and dL/dW = (p - y) h^T, so the gradient of one example is the concatenation
[p - y, vec((p - y) h^T)] of length C*(D+1) (bias part first, then W row-major), as in DeepCore's
CRAIG/GradMatch/Glister (their "last-layer gradients"). One forward pass, no backward.
"""
from __future__ import annotations

import numpy as np

from kdprune.selection.joint.base import JointInputs


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def last_layer_gradients(features: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[N, C*(D+1)] float32 gradients of CE(z, y) w.r.t. the last linear layer's (bias, weight)."""
    h = np.asarray(features, dtype=np.float32)
    e = softmax(np.asarray(logits, dtype=np.float64)).astype(np.float32)
    e[np.arange(len(e)), np.asarray(labels)] -= 1.0
    return np.concatenate([e, (e[:, :, None] * h[:, None, :]).reshape(len(h), -1)], axis=1)


def model_inputs(model, train, val, needs: set[str], num_classes: int, batch_size: int = 512) -> JointInputs:
    """What the selectors in ``needs`` read, from ``model`` (eval mode, a ``features`` method and a
    linear ``head``) on the training split ``train`` and validation split ``val`` (DeviceData)."""
    import torch

    from kdprune.train import predict_logits

    labels = train.y.cpu().numpy()
    out = JointInputs(labels=labels, num_classes=num_classes)
    if needs & {"features", "probs", "gradients"}:
        feats = predict_logits(model, train, batch_size, features=True)
        with torch.no_grad():
            logits = model.head(feats).float().cpu().numpy()
        out.features = feats.cpu().numpy()
        out.logits = logits
        out.probs = softmax(logits.astype(np.float64)).astype(np.float32)
        if "gradients" in needs:
            out.gradients = last_layer_gradients(out.features, logits, labels)
    if "validation" in needs:
        vf = predict_logits(model, val, batch_size, features=True)
        with torch.no_grad():
            out.val_logits = model.head(vf).float().cpu().numpy()
        out.val_features = vf.cpu().numpy()
        out.val_labels = val.y.cpu().numpy()
    if "model" in needs:
        out.model = model.eval()
        out.inputs = train.normalise(train.x)
    return out
