"""The typed stage artifacts (artifacts/stages.py): each writer's output is read back by its reader,
and a reader refuses values that are not keyed by the prepared train split or differ from their
recorded hashes, naming the stage to re-run."""
import json

import numpy as np
import pytest

from kdprune.data import PreparedSplit
from artifacts.stages import (
    ScoreReader, ScoreWriter, load_manifest, read_dynamics, write_dynamics, write_manifest,
)
from artifacts.files import IntegrityError

META = {"sha256": "d" * 64, "dataset": "toy", "num_classes": 3}


def _train(n: int = 8) -> PreparedSplit:
    ids = np.arange(100, 100 + 2 * n, 2, dtype=np.int64)  # sorted, not 0..n-1: ids are not positions
    return PreparedSplit(x=np.zeros((n, 1, 2, 2), np.uint8), y=np.arange(n, dtype=np.int64) % 3, ids=ids)


def test_scores_round_trip_and_a_changed_value_is_refused(tmp_path):
    train = _train()
    w = ScoreWriter(tmp_path, train.ids, META)
    info = w.write("el2n", np.linspace(0, 1, len(train), dtype=np.float64), {"method": "el2n", "keep": "high"})
    assert info["n"] == len(train) and info["dataset_sha256"] == META["sha256"]
    s = ScoreReader(tmp_path, META, train).read("el2n")
    np.testing.assert_array_equal(s.values, np.linspace(0, 1, len(train)))
    assert s.info["keep"] == "high" and s.sha256 == info["sha256"]
    np.save(tmp_path / "el2n.npy", np.zeros(len(train)))  # edited behind the JSON's back
    with pytest.raises(IntegrityError, match="does not match its el2n.json.*dvc repro scores"):
        ScoreReader(tmp_path, META, train).read("el2n")


def test_a_score_not_keyed_by_the_train_split_is_refused(tmp_path):
    train = _train()
    w = ScoreWriter(tmp_path, train.ids[::-1].copy(), META)  # the same ids in another order
    w.write("forgetting", np.zeros(len(train)), {"method": "forgetting"})
    with pytest.raises(IntegrityError, match="sample ids; re-run `dvc repro scores`"):
        ScoreReader(tmp_path, META, train)
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="one value per train example"):
        ScoreWriter(tmp_path / "b", train.ids, META).write("x", np.zeros(len(train) - 1), {})


def test_dynamics_round_trip_and_another_split_is_refused(tmp_path):
    train = _train()
    logits = np.random.default_rng(0).normal(size=(3, len(train), 3)).astype(np.float32)
    write_dynamics(tmp_path / "dynamics", train.ids, logits)
    np.testing.assert_allclose(read_dynamics(tmp_path, train), logits.astype(np.float16).astype(np.float32))
    other = _train(9)
    with pytest.raises(IntegrityError, match="re-run `dvc repro teacher`"):
        read_dynamics(tmp_path, other)


def test_manifests_hold_sorted_known_ids_with_their_counts_and_hash(tmp_path):
    train = _train()
    kept = train.ids[[1, 3, 4]]
    m = write_manifest(tmp_path / "m.json", {"method": "random", "fraction": 0.4, "dataset_sha256": META["sha256"]},
                       kept, train, META["num_classes"])
    assert m["n"] == 3 and m["class_counts"] == [1, 2, 0] and m["ids"] == kept.tolist()
    assert load_manifest(tmp_path / "m.json", META)["ids_sha256"] == m["ids_sha256"]
    with pytest.raises(ValueError, match="sorted and unique"):
        write_manifest(tmp_path / "u.json", {}, kept[::-1], train, 3)
    with pytest.raises(KeyError, match="not in this split"):
        write_manifest(tmp_path / "k.json", {}, np.array([101]), train, 3)
    assert not (tmp_path / "u.json").exists() and not (tmp_path / "k.json").exists()
    edited = json.loads((tmp_path / "m.json").read_text())
    edited["ids"] = edited["ids"][:-1]
    (tmp_path / "m.json").write_text(json.dumps(edited))
    with pytest.raises(IntegrityError, match="do not match the manifest's ids_sha256"):
        load_manifest(tmp_path / "m.json", META)


def test_every_field_of_a_manifest_is_covered_and_its_ids_must_be_in_the_split(tmp_path):
    """Editing "fraction" (or any field other than the ids) is refused; so is an id that is not in the
    prepared train split, even with both hashes recomputed; each names the file and `dvc repro select`."""
    from artifacts.stages import ids_sha256, manifest_sha256

    train = _train()
    write_manifest(tmp_path / "m.json", {"method": "random", "fraction": 0.1, "seed": 0,
                                         "dataset_sha256": META["sha256"]}, train.ids[[1, 3]], train, 3)
    good = json.loads((tmp_path / "m.json").read_text())
    for field, value in (("fraction", 0.7), ("method", "el2n"), ("n", 3), ("class_counts", [0, 0, 2])):
        (tmp_path / "m.json").write_text(json.dumps({**good, field: value}))
        with pytest.raises(IntegrityError, match=r"m\.json does not match its sha256.*dvc repro select"):
            load_manifest(tmp_path / "m.json", META)
    forged = {**good, "ids": [int(train.ids[1]), 10_000]}
    forged["ids_sha256"] = ids_sha256(forged["ids"])
    forged["sha256"] = manifest_sha256(forged)
    (tmp_path / "m.json").write_text(json.dumps(forged))
    with pytest.raises(IntegrityError, match=r"m\.json: 1 sample ids are not in the prepared train split, e\.g\. "
                                             r"\[10000\].*dvc repro select"):
        load_manifest(tmp_path / "m.json", META, train.ids)
