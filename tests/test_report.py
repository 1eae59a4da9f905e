"""The report generator and the claim verdicts on fixed, hand-built results tables."""
import numpy as np
import pandas as pd
import pytest

from kdprune import analysis as A
from kdprune.report import build_report, plot_accuracy, plot_teacher_size, plot_weight_heatmap

FRACTIONS = [0.1, 0.3, 0.5, 1.0]
METHODS = ["random", "el2n", "forgetting"]
TEACHERS = pd.DataFrame([
    {"arch": "small_cnn", "n_params": 24000, "test_acc": 0.90, "val_acc": 0.9, "n_train": 1000, "role": "main"},
    {"arch": "small_cnn_narrow", "n_params": 6000, "test_acc": 0.86, "val_acc": 0.86, "n_train": 1000, "role": "extra"},
    {"arch": "small_cnn_wide", "n_params": 95000, "test_acc": 0.92, "val_acc": 0.92, "n_train": 1000, "role": "extra"},
])
CTX = {"dataset": "fashion_mnist", "main_teacher": "small_cnn", "student_arch": "small_cnn", "student_params": 24000,
       "teachers_max_fraction": 0.1, "n_pool": 1000}


def acc(method, frac, w, teacher, seed, paper=True):
    """Accuracy model. paper=True: KD helps everywhere, more weight helps at small fractions and less at large,
    random >= score-based with KD, the smaller teacher helps at 0.1, random 50% + KD beats full no-KD."""
    base = 0.9 - 0.3 * (1 - frac) ** 3 - (0.02 if method != "random" and frac < 1 else 0.0)
    if w > 0:
        best_w = 0.9 if frac <= 0.3 else 0.5
        gain = 0.04 - 0.05 * abs(w - best_w)
        base += gain if paper else -gain - 0.01
        if teacher == "small_cnn_narrow":
            base += 0.01 if paper else -0.02
        if teacher == "small_cnn_wide":
            base += -0.01 if paper else 0.02
    return base + 0.001 * seed


def table(paper=True):
    rows = []
    for m in METHODS:
        for f in FRACTIONS:
            for seed in (0, 1, 2):
                arms = [(0.0, "small_cnn")] + [(w, t) for w in (0.5, 0.9) for t in TEACHERS.arch
                                               if t == "small_cnn" or f <= 0.1]
                for w, t in arms:
                    rows.append({"dataset": "fashion_mnist", "method": m, "fraction": f, "kd": w > 0, "kd_weight": w,
                                 "kd_schedule": "constant" if w > 0 else "none",
                                 "kd_setting": f"kd{w:g}-T4" if w > 0 else "nokd", "seed": seed, "teacher_arch": t,
                                 "test_acc": acc(m, f, w, t, seed, paper), "epochs": 8, "budget": "epochs",
                                 "selection_s": 0.0 if m == "random" else 1.5, "selection_peak_mb": 3.0})
    return pd.DataFrame(rows)


def test_claims_hold_on_results_shaped_like_the_paper():
    verdicts = {c.number: c.verdict for c in A.claims(A.with_arms(table()), "small_cnn", TEACHERS, 24000, 0.1)}
    assert verdicts == {1: A.HOLDS, 2: A.HOLDS, 3: A.HOLDS, 4: A.HOLDS, 5: A.HOLDS}


def test_claims_fail_on_results_that_contradict_the_paper():
    df = table(paper=False)
    df.loc[df.method == "random", "test_acc"] -= 0.05  # random far below the score-based methods
    verdicts = {c.number: c.verdict for c in A.claims(A.with_arms(df), "small_cnn", TEACHERS, 24000, 0.1)}
    assert verdicts[1] == A.FAILS and verdicts[2] == A.FAILS and verdicts[4] == A.FAILS and verdicts[5] == A.FAILS


def test_claims_not_tested_when_the_sweep_lacks_the_dimension():
    df = table()
    df = df[(df.kd_weight != 0.9) & (df.teacher_arch == "small_cnn") & (df.method != "random")]
    verdicts = {c.number: c for c in A.claims(A.with_arms(df), "small_cnn", TEACHERS.iloc[:1], 24000, 0.1)}
    assert verdicts[2].verdict == A.UNTESTED and "random" in verdicts[2].evidence
    assert verdicts[3].verdict == A.UNTESTED and "two constant KD weights" in verdicts[3].evidence
    assert verdicts[4].verdict == A.UNTESTED and "student.teachers" in verdicts[4].evidence
    assert verdicts[1].verdict == A.HOLDS


def test_partial_verdict_counts_the_cells():
    df = table()
    hit = (df.method == "el2n") & (df.fraction == 0.5) & df.kd
    df.loc[hit, "test_acc"] -= 0.2  # KD now loses in exactly one of 12 cells
    c1 = A.claims(A.with_arms(df), "small_cnn", TEACHERS, 24000, 0.1)[0]
    assert c1.verdict == A.PARTLY and "11 of 12" in c1.evidence and "el2n 0.5" in c1.evidence


def test_weight_grid_means_and_best_weight_per_fraction():
    df = A.with_arms(table())
    grid = A.weight_grid(A.main_teacher_rows(df, "small_cnn"))
    assert list(grid.index) == [0.0, 0.5, 0.9] and list(grid.columns) == FRACTIONS
    expect = np.mean([np.mean([acc(m, 0.3, 0.9, "small_cnn", s) for s in (0, 1, 2)]) for m in METHODS])
    assert grid.loc[0.9, 0.3] == pytest.approx(expect)
    assert list(A.best_weights(grid)) == [0.9, 0.9, 0.5, 0.5]


def test_report_has_every_section_with_the_numbers():
    df = table()
    md = build_report(df, TEACHERS, CTX)
    for heading in ("## Accuracy by method and kept fraction", "## KD weight by kept fraction",
                    "## Teacher size at low kept fractions", "## Selection cost beside accuracy",
                    "## The paper's claims on this run"):
        assert heading in md
    assert "| method | kept fraction | no KD | KD a=0.5 | KD a=0.9 |" in md
    # a mean ± std cell computed independently
    vals = [acc("el2n", 0.1, 0.9, "small_cnn", s) for s in (0, 1, 2)]
    cell = f"{100 * np.mean(vals):.2f} ± {100 * np.std(vals, ddof=1):.2f}"
    row = next(line for line in md.splitlines() if line.startswith("| el2n | 0.1 |"))
    assert row.split(" | ")[-1].rstrip(" |") == cell
    # extra teachers appear only in the teacher-size table, not in the main table's means
    assert row.count("±") == 3
    assert "| small_cnn_narrow | 6,000 | 86.00 | 0.1 |" in md
    assert md.count("**HOLDS**") == 5


def test_figures_are_pngs():
    df = table()
    for png in (plot_accuracy(df, "small_cnn", 0.9), plot_weight_heatmap(df, "small_cnn"),
                plot_teacher_size(df, TEACHERS, 0.1, 24000)):
        assert png[:4] == b"\x89PNG" and len(png) > 5000


def test_scheduled_kd_arm_gets_its_own_column():
    df = table()
    df = df[df.kd_weight != 0.9].copy()
    lin = df[df.kd_weight == 0.5].copy()
    lin["kd_schedule"], lin["kd_setting"] = "linear", "kdlin0.9-0.1-T4"
    lin["kd_weight"] = 0.9 + (0.1 - 0.9) * lin["fraction"]
    md = build_report(pd.concat([df, lin]), TEACHERS, CTX)
    assert "| no KD | KD a=0.5 | KD linear (kdlin0.9-0.1) |" in md


def test_report_says_which_methods_selected_class_balanced():
    df = table()
    df["balanced"] = df["method"] != "el2n"
    report = build_report(df, TEACHERS, CTX)
    assert ("Selection: class-balanced budgets (per class, proportional to class sizes) for forgetting, random; "
            "over the whole pool for el2n") in report


def test_report_states_the_recipe_behind_each_method():
    ctx = {**CTX, "recipes": {"el2n": "score el2n_proxy: ...; proxies: runs 10, epochs 5, read_at_epoch 3"}}
    report = build_report(table(), TEACHERS, ctx)
    assert "## How each method selected" in report and "- `el2n`: score el2n_proxy: ...; proxies: runs 10" in report


def test_report_puts_the_full_data_baseline_beside_published_figures():
    df = table()
    report = build_report(df, TEACHERS, CTX)
    full = df[(df.fraction == 1.0) & (df.kd_weight == 0) & (df.teacher_arch == "small_cnn")]
    per_seed = full.groupby("seed")["test_acc"].mean()
    want = f"{100 * per_seed.mean():.2f} ± {100 * per_seed.std(ddof=1):.2f}% test (8 epochs)"
    section = report.split("## Is the baseline healthy?")[1].split("\n## ")[0]
    assert want in section, section
    assert "| 2 conv + pooling (TensorFlow's tutorial CNN) | 3.3 M | no augmentation | 91.60 |" in section
    assert "| 2 conv, under 100 K parameters | < 100 K | no augmentation | 92.50 |" in section
    gap = 100 * per_seed.mean() - 92.5
    assert f"Ours is {abs(gap):.2f} points {'above' if gap >= 0 else 'below'} the best published figure" in section
    other = build_report(df, TEACHERS, {**CTX, "dataset": "digits"})
    assert "No published figure for digits is recorded" in other
    assert "Is the baseline healthy?" not in build_report(df[df.fraction < 1.0], TEACHERS, CTX)


def test_claim_2_compares_random_with_score_based_methods_only_not_with_random_over_the_whole_pool():
    df = table()
    glob = df[df.method == "random"].assign(method="random:global")
    glob["test_acc"] += 0.03  # the global random draw far above: not a score-based rival
    both = pd.concat([df, glob], ignore_index=True)
    c2 = next(c for c in A.claims(A.with_arms(both), "small_cnn", TEACHERS, 24000, 0.1) if c.number == 2)
    assert c2.verdict == A.HOLDS and "random:global" not in c2.evidence, c2.evidence
    assert "vs el2n" in c2.evidence or "vs forgetting" in c2.evidence


def test_verdicts_carry_their_strength_and_what_would_settle_them():
    """One seed, or a baseline far below published figures: the verdicts say they are weak and what
    would settle them; three seeds and a healthy baseline: supported (issue 28 item 8)."""
    one_seed = table()[lambda d: d.seed == 0]
    md = build_report(one_seed, TEACHERS, CTX)
    assert "(weak)" in md and "one seed per cell" in md and "at least 3 seeds" in md
    t = A.trust(A.main_teacher_rows(A.with_arms(table()), "small_cnn"), baseline_gap=-8.5)
    assert t.strength == "weak" and "8.5 points below published" in t.why and "student.epochs" in t.settle
    t = A.trust(A.main_teacher_rows(A.with_arms(table()), "small_cnn"), baseline_gap=-1.0)
    assert t.strength == "supported by 3 seeds" and t.settle == ""


def test_the_best_arm_line_agrees_with_the_bold_weight():
    df = table()
    df.loc[(df.fraction == 0.5) & ~df.kd, "test_acc"] += 0.2  # no KD best at 0.5
    md = build_report(df, TEACHERS, CTX)
    line = next(x for x in md.splitlines() if x.startswith("Best arm per fraction"))
    assert "0.5: no KD" in line and "0.1: KD a=0.9" in line
    assert "for none" not in md and "| selection (s) |" in md
