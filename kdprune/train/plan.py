"""The distill stage's plan, as pure code: which students the params ask for, each one's KD setting,
training budget and expected cost, and what determines its bytes (its training key).

Nothing here reads a file: the stage reads the manifests once and passes them in (file name -> parsed
manifest), with the facts only it can know (hashes of the dataset, the teachers and the stage's code).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from kdprune.distill import LOSSES, KDSetting
from kdprune.selection import SAMPLERS
from kdprune.settings import StudentSettings


@dataclass(frozen=True)
class Student:
    """One student of the sweep: its name, the manifest (file name under data/manifests) it trains on, its
    seed, the manifest's kept fraction, and its KD setting (None: no KD)."""

    name: str
    manifest: str
    seed: int
    fraction: float
    kd: Optional[KDSetting]

    @property
    def kd_setting(self) -> str:
        return "nokd" if self.kd is None else self.kd.setting

    @property
    def loss(self) -> str:
        """The loss it trains on: its KD loss, or the registered no-KD baseline."""
        return LOSSES.of(self.kd).name


def student_variants(manifests: dict[str, dict], st: StudentSettings, teacher: str) -> list[Student]:
    """Every student the student settings ask for: manifests (in file-name order) x seeds x (no KD + each KD
    setting of the manifest's kept fraction). The KD settings (``st.kd``) were resolved by params validation
    for each kept fraction: one per arm of the weight schedule (one per constant weight, or one whose weight
    follows the kept fraction) and teacher allowed at that fraction (extra teachers, ``st.teachers``, up to
    ``st.teachers_max_fraction``); ``teacher`` is the main teacher's architecture (students of the others are
    named after theirs). A seeded manifest (random) is paired with the student of the same seed. A manifest
    kept at a fraction the params do not make is a ValueError: it comes from other params."""
    kd_at = dict(st.kd)
    out = []
    for fname in sorted(manifests):
        m = manifests[fname]
        frac = float(m["fraction"])
        if frac not in kd_at:
            raise ValueError(f"manifest {fname}: kept fraction {frac:g} is not one the params make (select.fractions, "
                             f"and 1.0 for a full-data sampler: {', '.join(f'{f:g}' for f in kd_at)}); the manifests "
                             "are from other params: run `dvc repro select`")
        stem = fname.removesuffix(".json")
        for seed in [m["seed"]] if m["seed"] is not None else st.seeds:
            for kd in (None, *kd_at[frac]):
                name = (f"{stem}__{'nokd' if kd is None else kd.setting}"
                        + ("" if kd is None or kd.teacher == teacher else f"__t-{kd.teacher}") + f"__s{seed}")
                out.append(Student(name, fname, seed, frac, kd))
    return out


def kd_weights(st: StudentSettings) -> list[float]:
    """The KD weights the sweep's students distil with, each once, in the order of the first fraction they
    appear at (a constant schedule: its weights, in order)."""
    return list(dict.fromkeys(kd.weight for _, settings in st.kd for kd in settings))


def student_budget(st: StudentSettings, n_total: int, manifest: dict, n_pool: int) -> tuple[int, int | None]:
    """(epochs, max_steps) of a student. ``epochs``: student.epochs over its subset (fewer steps on
    smaller subsets). ``steps``: the steps the full train split takes in student.epochs epochs,
    spread over as many epochs of the subset (or of the RS2 per-epoch draw) as that needs."""
    if st.budget == "epochs":
        return st.epochs, None
    full_steps = st.epochs * math.ceil(n_total / st.batch_size)
    s = manifest.get("sampler")
    per_epoch = SAMPLERS.get(s["name"]).epoch_size(n_pool, **s["options"]) if s else n_pool
    return math.ceil(full_steps / math.ceil(per_epoch / st.batch_size)), full_steps


def submission_order(st: StudentSettings, students: list[Student], sizes: list[int]) -> list[int]:
    """The order to submit trainings in, longest first, as positions into ``students`` (``sizes``: each one's
    subset size): the last to finish are short ones, so parallel workers end together instead of one waiting on
    a long student. A student's expected cost is its subset's size (its steps under the ``epochs`` budget; the
    ``steps`` budget gives every student the same), times 1.5 when a live teacher runs on every batch."""
    def cost(s: Student, n: int) -> float:
        live = s.kd is not None and not st.cached_logits
        return (n if st.budget == "epochs" else 1) * (1.5 if live else 1.0)

    costs = [cost(s, n) for s, n in zip(students, sizes, strict=True)]
    return sorted(range(len(students)), key=lambda k: -costs[k])


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def training_inputs(student: Student, manifest: dict, st: StudentSettings, *, n_total: int, dataset_sha256: str,
                    teacher_sha256: Optional[str], code_sha256: str, compute: dict) -> dict:
    """Everything that determines the bytes a student's training gives (weights, model.json, its result),
    and nothing that only names it: the data (dataset hash, the manifest's ids hash, weights and sampler),
    its settings (every student param but the sweep's axes, with the budget resolved), its seed, its KD
    setting with the teacher's weights hash and whether its logits are cached (None without KD), the code
    that trains it (``code_sha256``) and the compute it runs on (``compute``: kernels, threads, torch,
    device). Two students with equal inputs train to the same bytes: one trains, or an earlier one is
    reused."""
    epochs, max_steps = student_budget(st, n_total, manifest, len(manifest["ids"]))
    weights = manifest.get("weights")
    kd = None
    if student.kd is not None:
        kd = {"loss": student.kd.loss, "weight": student.kd.weight, "temperature": student.kd.temperature,
              "options": dict(student.kd.options), "teacher": student.kd.teacher, "teacher_sha256": teacher_sha256,
              "teacher_logits": "cached" if st.cached_logits else "live"}
    return {
        "data": {"dataset_sha256": dataset_sha256, "ids_sha256": manifest["ids_sha256"],
                 "weights_sha256": None if weights is None else _sha256(weights), "sampler": manifest.get("sampler")},
        # its training keys and budget; the sweep's axes and the KD setting's parts (a loss's own options
        # included: a no-KD student does not depend on them) enter through ``kd``
        "settings": {**st.training(), "budget": st.budget},
        "epochs": epochs, "max_steps": max_steps, "seed": student.seed, "kd": kd,
        "code_sha256": code_sha256, "compute": compute,
    }


def training_key(inputs: dict) -> str:
    """The sha256 of a student's :func:`training_inputs`."""
    return _sha256(inputs)


def group_students(students: list[Student], keys: dict[str, str]) -> list[list[Student]]:
    """Students grouped by training key (identical training), in first-seen order: the first of each
    group trains (or is reused), the others are recorded from it under their own names (e.g. every
    method at fraction 1.0)."""
    groups: dict[str, list[Student]] = {}
    for s in students:
        groups.setdefault(keys[s.name], []).append(s)
    return list(groups.values())


def as_record(kd: Optional[KDSetting]) -> dict:
    """A KD setting as plain values (MLflow params, JSON)."""
    return {} if kd is None else asdict(kd)
