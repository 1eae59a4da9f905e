"""Glister (Killamsetty et al. 2021, "GLISTER: Generalization based Data Subset Selection for Efficient
and Robust Learning", AAAI; as DeepCore's ``Glister``)."""
from __future__ import annotations

import numpy as np

from kdprune.selection.joint.base import Option, Picked, lazy_greedy, register_joint
from kdprune.selection.joint.inputs import last_layer_gradients


def validation_gradient(val_features: np.ndarray, val_logits: np.ndarray, val_labels: np.ndarray,
                        step: np.ndarray, eta: float) -> np.ndarray:
    """Mean last-layer CE gradient over the validation set after the last layer moved by
    ``-eta * step`` (``step`` = [d bias (C), d weight (C*D, row-major)], a train-gradient layout)."""
    c = val_logits.shape[1]
    db, dw = step[:c], step[c:].reshape(c, -1)
    logits = val_logits - eta * (db[None, :] + val_features @ dw.T)
    return last_layer_gradients(val_features, logits, val_labels).astype(np.float64).mean(axis=0)


@register_joint(
    "glister", needs=("gradients", "validation"), seeded=False, balance=True,
    options={"eta": Option(float, 0.1, "step size of the one-step Taylor update (DeepCore: the training lr)",
                           low=0.0),
             "greedy": Option(str, "naive", "naive: exact greedy on the Taylor gains; lazy: lazy greedy (the gains "
                              "are not submodular, so lazy is an approximation)", ("naive", "lazy"))},
    variant="last-layer (teacher) gradients; gain of j = g_j . mean validation gradient at the last layer moved by "
            "-eta * mean of the picked gradients, recomputed after every pick; validation examples of the same "
            "class when per class; CE on the logits, as DeepCore's code; the validation gradient is updated after "
            "every pick (DeepCore's passes its update as 'upadate_state', which its optimiser never calls)",
    cost="one teacher forward on train and validation; O(k*(N + M)*G) time (naive), O((N + M)*G) memory")
def glister(inputs, k, rng, eta=0.1, greedy="naive"):
    """Glister: greedily add the example whose gradient step most reduces the validation loss.

    With kept set S and last-layer parameters theta, the validation loss after a step on S is
    approximated to first order: L_val(theta - eta * mean_{s in S} g_s - eta * g_j) ~ L_val(theta_S)
    - eta * g_j . grad L_val(theta_S), so the gain of j is g_j . grad L_val(theta_S), where
    theta_S = theta - eta * mean_{s in S} g_s and the validation gradient is recomputed in closed
    form (last layer) after every pick. Ties go to the lowest position. The validation loss is
    cross-entropy on the logits, as in DeepCore's ``Glister`` (its criterion on the model's outputs);
    DeepCore's code passes its validation update as ``upadate_state`` (misspelt), which its greedy
    optimiser ignores, so there the validation gradient stays at its initial value.
    """
    g = np.asarray(inputs.gradients, dtype=np.float64)
    vf = np.asarray(inputs.val_features, dtype=np.float64)
    vz = np.asarray(inputs.val_logits, dtype=np.float64)
    vy = np.asarray(inputs.val_labels)
    if len(vy) == 0:
        raise ValueError("glister: no validation examples for this pool (class); run it with balance: false or "
                         "hold out more validation data")
    total = np.zeros(g.shape[1])
    chosen: list[int] = []
    vgrad = [validation_gradient(vf, vz, vy, total, eta)]

    def add(j):
        chosen.append(j)
        total[:] += g[j]
        vgrad[0] = validation_gradient(vf, vz, vy, total / len(chosen), eta)

    if greedy == "lazy":
        return Picked(lazy_greedy(g @ vgrad[0], k, lambda j: float(g[j] @ vgrad[0]), add))
    free = np.ones(len(g), dtype=bool)
    for _ in range(k):
        gains = g @ vgrad[0]
        gains[~free] = -np.inf
        j = int(np.argmax(gains))
        free[j] = False
        add(j)
    return Picked(np.asarray(chosen, dtype=np.int64))
