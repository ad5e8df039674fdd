"""The measures the field now reports beside accuracy: agreement with the unpruned answer, and accuracy on
VTC-Bench's difficult subset.

* **Agreement** ("loyalty"): the share of samples whose pruned answer equals the unpruned model's answer to the
  same prompt (after the VQA answer normalisation, `tpx.metrics.normalize_answer`). Accuracy can stay put
  while answers change — a pruned model that loses as many right answers as it gains hides that in accuracy,
  not in agreement — and agreement needs no ground truth.
* **Difficult subset**: the samples the downsampling baseline (`downsample`, at the same retention) answers
  wrongly. VTC-Bench found that plain downsampling beats many compression methods on the usual benchmarks
  because most of their samples survive any coarse view of the image; it keeps the samples downsampling fails
  as the ones that tell methods apart. Each method's accuracy on that subset is reported beside its overall
  score.

Both are per-sample columns, so they go through the same paired, task-stratified bootstrap as every score in
`tpx.analysis.stats` (mean over tasks; seeded configurations averaged over seeds per sample). The difficult
subset is fixed by the reference's answers on the observed samples; its intervals are conditional on it.

Reference: Liao et al., Are We Using the Right Benchmark: An Evaluation Framework for Visual Token Compression
Methods (VTC-Bench), arXiv 2510.07143 (downsampling as the filter of difficult samples); Peng et al., Can
Visual Input Be Compressed? (UniPruneBench), arXiv 2511.02650 (simple baselines at matched token counts).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from tpx.analysis import stats
from tpx.analysis.findings import configs_of
from tpx.grid import UNPRUNED
from tpx.metrics import normalize_answer

__all__ = ["AGREEMENT", "CORRECT", "add_agreement", "difficult_subset", "measures_table"]

AGREEMENT = "agreement"  # the per-answer column: 1.0 when the answer equals the unpruned one, else 0.0
CORRECT = 1.0  # a sample is answered correctly when its score reaches this (organism, exact match: 0 or 1)
_KEY = list(stats.KEY)


def add_agreement(rows: pd.DataFrame, baseline: str = UNPRUNED) -> pd.DataFrame:
    """`rows` with an `AGREEMENT` column: whether each answer equals the `baseline`'s answer to the same sample.

    Answers are compared after `tpx.metrics.normalize_answer` (case, punctuation, articles, number words). The
    baseline's own rows agree with themselves (1.0).

    Raises:
        ValueError: no rows labelled `baseline`, or a sample the baseline did not answer.
    """
    label = rows["label"] if "label" in rows.columns else rows["method"]
    base = rows[label == baseline]
    if base.empty:
        raise ValueError(f"add_agreement needs the {baseline!r} rows; present: {sorted(set(label))}")
    base = base.drop_duplicates(_KEY).set_index(_KEY)["answer"].map(normalize_answer)
    index = pd.MultiIndex.from_frame(rows[_KEY])
    theirs = base.reindex(index)
    if theirs.isna().any():
        missing = rows.loc[theirs.isna().to_numpy(), "id"].head(3).tolist()
        raise ValueError(f"the {baseline!r} rows do not answer every sample (e.g. {missing}); agreement needs them")
    mine = rows["answer"].map(normalize_answer).to_numpy()
    return rows.assign(**{AGREEMENT: (mine == theirs.to_numpy()).astype(float)})


def difficult_subset(rows: pd.DataFrame, reference: str, correct: float = CORRECT) -> pd.DataFrame:
    """The rows (every configuration's) of the samples that the `reference` configuration answers wrongly.

    Args:
        rows: result rows of one retention (and the unpruned baseline), holding `reference`.
        reference: label of the configuration that defines the subset (VTC-Bench: downsampling at the same
            retention); a seeded reference counts its mean score over seeds.
        correct: a sample is answered correctly when its score is ≥ this.

    Raises:
        ValueError: no rows labelled `reference`.
    """
    label = rows["label"] if "label" in rows.columns else rows["method"]
    ref = rows[label == reference]
    if ref.empty:
        raise ValueError(f"no rows labelled {reference!r} to define the difficult subset; present: {sorted(set(label))}")
    mean = ref.groupby(_KEY)["score"].mean()
    hard = mean.index[mean.to_numpy() < correct]
    return rows[pd.MultiIndex.from_frame(rows[_KEY]).isin(hard)]


def measures_table(rows: pd.DataFrame, reference: str, labels: Sequence[str] | None = None, *,
                   baseline: str = UNPRUNED, correct: float = CORRECT, n_boot: int = stats.N_BOOT,
                   seed: int = 0) -> pd.DataFrame:
    """Per configuration: relative score, agreement with the unpruned answer and difficult-subset accuracy, each
    with its paired bootstrap CI (`stats.score`).

    The difficult subset of a retention is defined by `reference` at that retention; the unpruned model's
    accuracy on it is given too (one row per retention, label `baseline`), the ceiling a pruned model is read
    against.

    Args:
        rows: `evaluate` rows with the baseline and `reference`. reference: label of the downsampling baseline.
        labels: configurations to report (default: every label but the baseline), in order.
        baseline: the unpruned label. correct: see `difficult_subset`. n_boot, seed: of the bootstrap.

    Returns:
        One row per (label, retention): method, hook, layer, retention, label, score / score_low / score_high (%
        of unpruned), agreement / agreement_low / agreement_high (% of samples), difficult / difficult_low /
        difficult_high (accuracy ×100 on the subset; NaN where the reference gets every sample right),
        n_per_task (all samples, per task), n_difficult (subset size, all tasks).
    """
    rows = add_agreement(rows, baseline)
    label_col = rows["label"] if "label" in rows.columns else rows["method"]
    if labels is None:
        labels = [lab for lab in dict.fromkeys(label_col) if lab != baseline]
    out = []
    for r in dict.fromkeys(rows.loc[label_col.isin(list(labels)), "retention"]):
        sub = rows[(rows["retention"] == r) | (label_col == baseline)]
        hard = difficult_subset(sub, reference, correct) if reference in set(sub["label"]) else sub.iloc[:0]
        for label in [baseline, *labels]:
            if label != baseline and not ((sub["label"] == label) & (sub["retention"] == r)).any():
                continue
            rel = stats.score(sub, label, baseline=baseline, n_boot=n_boot, seed=seed)
            agree = stats.score(sub, label, value=AGREEMENT, n_boot=n_boot, seed=seed)
            diff = stats.score(hard, label, n_boot=n_boot, seed=seed) if len(hard) else None
            nan = float("nan")
            out.append({**configs_of(sub[sub["label"] == label], label), "retention": r,
                        "score": rel.estimate, "score_low": rel.ci_low, "score_high": rel.ci_high,
                        "agreement": agree.estimate, "agreement_low": agree.ci_low, "agreement_high": agree.ci_high,
                        "difficult": nan if diff is None else diff.estimate,
                        "difficult_low": nan if diff is None else diff.ci_low,
                        "difficult_high": nan if diff is None else diff.ci_high,
                        "n_per_task": min(rel.n_per_task.values()),
                        "n_difficult": int(hard[["benchmark", "task", "id"]].drop_duplicates().shape[0])})
    return pd.DataFrame(out)
