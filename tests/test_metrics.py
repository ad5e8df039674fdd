"""`tpx.metrics` against hand-computed cases; every expected number is worked out in a comment."""

import ast
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tpx import metrics
from tpx.metrics import (
    average_relative,
    box_iou,
    box_to_pixels,
    exact_match,
    grounding_accuracy,
    mme_scores,
    multiple_choice_accuracy,
    normalize_answer,
    parse_box,
    parse_choice,
    parse_yes_no,
    pope_scores,
    relative_score,
    relative_table,
    vqa_accuracy,
)


def test_imports_only_stdlib_numpy_pandas():
    tree = ast.parse(Path(metrics.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert names <= {"collections", "math", "re", "string", "numpy", "pandas"}


# ----------------------------------------------------------------------------- normalisation, VQA


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two", "2"),  # number word -> digit
        ("a dog.", "dog"),  # article dropped, final period dropped
        ("The Dog!", "dog"),  # lower-case, punctuation -> space
        ("dont", "don't"),  # missing apostrophe restored
        ("100,978", "100978"),  # comma between digits removed without a space
        ("2.5", "2.5"),  # decimal point kept
        ("girl's", "girl's"),  # apostrophe kept (possessive)
        ("2:00 pm", "2:00 pm"),  # colon kept (time)
        ("  yes\n", "yes"),
        ("Five dogs, a cat", "5 dogs cat"),
        ("black/white", "black white"),
        ("its", "its"),  # a real word: not turned into "it's"
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


HUMANS_3_DOG = ["dog"] * 3 + ["cat"] * 7


def test_vqa_accuracy_min_rule():
    assert vqa_accuracy("dog", HUMANS_3_DOG) == 1.0  # min(3/3, 1) = 1
    assert vqa_accuracy("dog", ["dog"] * 2 + ["cat"] * 8) == pytest.approx(2 / 3)  # min(2/3, 1)
    assert vqa_accuracy("dog", ["dog"] * 10) == 1.0  # min(10/3, 1) = 1
    assert vqa_accuracy("bird", HUMANS_3_DOG) == 0.0  # 0/3
    assert vqa_accuracy("Two", ["2", "2", "two", "3"]) == 1.0  # "Two" == "2" == "two": min(3/3, 1)
    assert vqa_accuracy("A dog.", ["dog", "cat"]) == pytest.approx(1 / 3)  # "a dog." -> "dog": 1/3


def test_vqa_accuracy_leave_one_out():
    # 3 of 10 match: dropping a matching annotator (3 ways) leaves 2 -> 2/3; dropping another (7 ways)
    # leaves 3 -> 1. Mean = (3 * 2/3 + 7 * 1) / 10 = 9/10.
    assert vqa_accuracy("dog", HUMANS_3_DOG, leave_one_out=True) == pytest.approx(0.9)
    # 2 of 10: (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6/10.
    assert vqa_accuracy("dog", ["dog"] * 2 + ["cat"] * 8, leave_one_out=True) == pytest.approx(0.6)
    # 4 of 10: every 9-subset keeps >= 3 matches -> 1.
    assert vqa_accuracy("dog", ["dog"] * 4 + ["cat"] * 6, leave_one_out=True) == 1.0


def test_exact_match():
    assert exact_match("A dog.", "dog") == 1.0
    assert exact_match("Two", "2") == 1.0
    assert exact_match("cat", "dog") == 0.0
    assert exact_match("dogs", "dog") == 0.0  # no stemming


# ----------------------------------------------------------------------------- POPE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes, there is a dog in the image.", "yes"),
        ("Yes", "yes"),
        ("No.", "no"),
        ("There is not a dog in the image.", "no"),
        ("No, there is no dog.", "no"),
        ("Yes. There is no cat, though.", "yes"),  # only the first sentence counts
        ("NO!", "no"),
        ("", "yes"),  # LLaVA's rule: anything without no/not is yes
        ("Nothing like that.", "yes"),  # "nothing" is not the word "no"
    ],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) == expected


def test_pope_scores_small_confusion_matrix():
    # 3 TP, 1 FP, 4 TN, 2 FN (10 samples).
    preds = ["Yes, there is."] * 3 + ["Yes"] + ["No."] * 4 + ["There is no such object."] * 2
    labels = ["yes"] * 3 + ["no"] + ["no"] * 4 + ["YES "] * 2
    s = pope_scores(preds, labels)
    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (3, 1, 4, 2)
    assert s["accuracy"] == pytest.approx(0.7)  # (3 + 4) / 10
    assert s["precision"] == pytest.approx(0.75)  # 3 / (3 + 1)
    assert s["recall"] == pytest.approx(0.6)  # 3 / (3 + 2)
    assert s["f1"] == pytest.approx(2 / 3)  # 2 * 0.75 * 0.6 / (0.75 + 0.6) = 0.9 / 1.35
    assert s["yes_ratio"] == pytest.approx(0.4)  # (3 + 1) / 10


def test_pope_scores_no_yes_predicted():
    s = pope_scores(["No", "no"], ["yes", "no"])
    # TP = FP = 0: precision and F1 defined as 0; accuracy 1/2; yes-ratio 0.
    assert (s["precision"], s["recall"], s["f1"], s["accuracy"], s["yes_ratio"]) == (0.0, 0.0, 0.0, 0.5, 0.0)


# ----------------------------------------------------------------------------- MME


def _mme_rows(subtask, image_id, pairs):
    return [{"subtask": subtask, "image_id": image_id, "prediction": p, "answer": a} for p, a in pairs]


def test_mme_acc_plus_two_images():
    rows = _mme_rows("existence", "img1", [("Yes", "Yes"), ("No, there is not.", "No")])  # both right
    rows += _mme_rows("existence", "img2", [("Yes", "Yes"), ("Yes", "No")])  # one right
    s = mme_scores(pd.DataFrame(rows), require_all_subtasks=False)
    # acc = 3 right / 4 questions = 75; acc+ = 1 image of 2 with both right = 50 -> 125.
    assert s["existence"] == pytest.approx(125.0)
    assert s["perception"] == pytest.approx(125.0)
    assert math.isnan(s["cognition"])  # no cognition subtask present
    assert s["total"] == pytest.approx(125.0)


def test_mme_full_suite_totals():
    rows = []
    for name in metrics.MME_PERCEPTION + metrics.MME_COGNITION:
        rows += _mme_rows(name, "a", [("Yes", "Yes"), ("No", "No")])
    rows += _mme_rows("OCR", "b", [("I think so", "Yes"), ("no", "No")])  # "I th" has no yes/no: wrong
    rows += _mme_rows("code_reasoning", "b", [("no", "Yes"), ("yes", "No")])  # both wrong
    s = mme_scores(pd.DataFrame(rows))
    # OCR: acc = 3/4 = 75, acc+ = 1/2 = 50 -> 125; the other 9 perception subtasks: 100 + 100 = 200.
    assert s["OCR"] == pytest.approx(125.0)
    assert s["perception"] == pytest.approx(9 * 200 + 125)  # 1925
    # code_reasoning: acc = 2/4 = 50, acc+ = 1/2 = 50 -> 100; the other 3 cognition subtasks: 200.
    assert s["code_reasoning"] == pytest.approx(100.0)
    assert s["cognition"] == pytest.approx(3 * 200 + 100)  # 700
    assert s["total"] == pytest.approx(1925 + 700)


# ----------------------------------------------------------------------------- grounding


def test_box_iou_cases():
    a = [0.0, 0.0, 2.0, 2.0]  # area 4
    assert box_iou(a, a) == 1.0  # identical
    assert box_iou(a, [3.0, 3.0, 4.0, 4.0]) == 0.0  # disjoint
    assert box_iou(a, [2.0, 0.0, 4.0, 2.0]) == 0.0  # touching edge: zero-area intersection
    # b shifted by half a width: inter = 1 * 2 = 2, union = 4 + 4 - 2 = 6 -> 1/3.
    assert box_iou(a, [1.0, 0.0, 3.0, 2.0]) == pytest.approx(1 / 3)
    # b = left half of a: inter = 2, union = 4 + 2 - 2 = 4 -> 1/2.
    assert box_iou(a, [0.0, 0.0, 1.0, 2.0]) == pytest.approx(0.5)
    assert box_iou([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]) == 0.0  # two points: union 0 -> 0


def test_box_iou_vectorised():
    a = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2]], dtype=float)
    b = np.array([[0, 0, 2, 2], [3, 3, 4, 4], [1, 0, 3, 2]], dtype=float)
    np.testing.assert_allclose(box_iou(a, b), [1.0, 0.0, 1 / 3])
    # broadcasting one box against two: shape (2,)
    np.testing.assert_allclose(box_iou([0, 0, 2, 2], b[1:]), [0.0, 1 / 3])


def test_grounding_accuracy():
    gt = [[0, 0, 2, 2]] * 4
    preds = [[0, 0, 2, 2], [0, 0, 1, 2], [1, 0, 3, 2], None]  # IoU 1, 1/2, 1/3, unparsed
    assert grounding_accuracy(preds, gt) == pytest.approx(0.5)  # 1 >= .5 and .5 >= .5 -> 2/4
    assert grounding_accuracy(preds, gt, threshold=0.3) == pytest.approx(0.75)  # 1, .5, 1/3 -> 3/4
    assert grounding_accuracy(preds, gt, threshold=1.0) == pytest.approx(0.25)  # only the identical box
    # malformed predictions (inverted, too short, NaN) are misses, not errors: 1 hit of 4
    assert grounding_accuracy([[0, 0, 2, 2], [2, 2, 0, 0], [0, 0, 2], [0, 0, np.nan, 2]], gt) == 0.25


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[0.12, 0.3, 0.5, 0.66]", (0.12, 0.3, 0.5, 0.66)),
        ("The bounding box is [0.12,0.3,0.5,0.66].", (0.12, 0.3, 0.5, 0.66)),
        ("[[12, 30, 500, 660]]", (12.0, 30.0, 500.0, 660.0)),
        ("(0.1, 0.2), (0.3, 0.4)", (0.1, 0.2, 0.3, 0.4)),
        ("[1, 2, 3]", None),
        ("a dog on the left", None),
    ],
)
def test_parse_box(text, expected):
    assert parse_box(text) == expected


def test_box_to_pixels():
    # 200 x 100 image, no padding: x * 200, y * 100.
    assert box_to_pixels([0.1, 0.2, 0.5, 1.0], 200, 100) == pytest.approx((20, 20, 100, 100))
    assert box_to_pixels([100, 200, 500, 1000], 200, 100, scale=1000) == pytest.approx((20, 20, 100, 100))
    # Padded to 200 x 200, image centred with 50 rows above: y = 0.25 * 200 - 50 = 0, 0.75 * 200 - 50 = 100.
    assert box_to_pixels([0.25, 0.25, 0.75, 0.75], 200, 100, pad_to_square=True) == pytest.approx(
        (50, 0, 150, 100))


# ----------------------------------------------------------------------------- multiple choice


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A", "A"),
        ("a", "A"),
        ("B.", "B"),
        ("(C)", "C"),
        ("D. a red car", "D"),
        ("(B) the cat", "B"),
        ("The answer is C.", "C"),
        ("Answer: (A)", "A"),
        ("E", None),  # only 4 options
        ("a dog", None),  # lower-case "a" in a sentence is an article
        ("The answer is a dog", None),
        ("I am not sure", None),
    ],
)
def test_parse_choice(text, expected):
    assert parse_choice(text, 4) == expected


def test_multiple_choice_accuracy():
    preds = ["A", "The answer is B.", "(C) cat", "I don't know"]
    answers = ["A", "B", "D", "A"]
    assert multiple_choice_accuracy(preds, answers, 4) == pytest.approx(0.5)  # right, right, wrong, unparsed
    # per-question option counts: "C" is out of range for a 2-option question -> wrong: 1/2
    assert multiple_choice_accuracy(["B", "C"], ["B", "A"], [2, 2]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- relative score


def _frame(scores):
    return pd.DataFrame(
        [{"benchmark": b, "method": m, "score": s} for m, row in scores.items() for b, s in row.items()])


def test_relative_score():
    assert relative_score(1736, 1862) == pytest.approx(0.93233, abs=1e-5)  # MME, Random, Table 1


def test_average_relative_two_methods_two_benchmarks():
    df = _frame({"unpruned": {"GQA": 60.0, "MME": 2000.0},
                 "m1": {"GQA": 54.0, "MME": 1800.0},
                 "m2": {"GQA": 60.0, "MME": 1000.0}})
    avg = average_relative(df)
    assert avg["unpruned"] == 1.0
    assert avg["m1"] == pytest.approx(0.9)  # (54/60 + 1800/2000) / 2 = (0.9 + 0.9) / 2
    assert avg["m2"] == pytest.approx(0.75)  # (60/60 + 1000/2000) / 2 = (1.0 + 0.5) / 2
    assert list(avg.index) == ["unpruned", "m1", "m2"]


def test_average_relative_missing_benchmark_and_custom_baseline():
    df = _frame({"full": {"GQA": 60.0, "MME": 2000.0}, "m": {"GQA": 30.0}})
    assert average_relative(df, baseline="full")["m"] == pytest.approx(0.5)  # 30/60, MME absent
    assert math.isnan(relative_table(df, baseline="full").loc["m", "MME"])


def test_average_relative_reproduces_table1():
    # Wen et al. 2025, Table 1 (LLaVA-1.5-7B, 144 tokens): the printed Avg. is recovered.
    benches = ["GQA", "MMB", "MMB-CN", "MME", "POPE", "SQA", "TextVQA", "VizWiz"]
    rows = {"unpruned": [61.9, 64.7, 58.1, 1862, 85.9, 69.5, 58.2, 50.0],
            "random": [59.0, 62.2, 54.1, 1736, 79.4, 67.8, 51.7, 51.9],
            "pooling": [59.1, 62.5, 55.2, 1763, 81.4, 69.1, 53.4, 51.9],
            "fastv": [56.5, 59.3, 42.1, 1689, 71.8, 65.3, 53.6, 51.3],
            "sparsevlm": [55.1, 59.5, 51.0, 1711, 77.6, 69.3, 54.9, 51.4]}
    avg = average_relative(_frame({m: dict(zip(benches, v)) for m, v in rows.items()})) * 100
    # random: 95.052 (the paper prints 95.0), pooling: 96.438, fastv: 89.792, sparsevlm: 93.478.
    assert avg["random"] == pytest.approx(95.0, abs=0.06)
    assert avg["pooling"] == pytest.approx(96.4, abs=0.05)
    assert avg["fastv"] == pytest.approx(89.8, abs=0.05)
    assert avg["sparsevlm"] == pytest.approx(93.5, abs=0.05)


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: vqa_accuracy("dog", []), "answers"),
        (lambda: vqa_accuracy("dog", "dog"), "answers"),
        (lambda: vqa_accuracy("dog", ["dog"], leave_one_out=True), "answers"),
        (lambda: pope_scores(["yes"], ["yes", "no"]), "predictions and labels"),
        (lambda: pope_scores([], []), "predictions"),
        (lambda: pope_scores(["yes"], ["maybe"]), r"labels\[0\]"),
        (lambda: grounding_accuracy([[0, 0, 1, 1]], [[0, 0, 1, 1]], threshold=0), r"threshold.*\(0, 1\]"),
        (lambda: grounding_accuracy([[0, 0, 1, 1]], [[0, 0, 1, 1]], threshold=1.5), "threshold"),
        (lambda: grounding_accuracy([[0, 0, 1, 1]], [], threshold=0.5), "pred_boxes and gt_boxes"),
        (lambda: grounding_accuracy([[0, 0, 1, 1]], [[1, 1, 0, 0]]), "gt_boxes must have x2 >= x1"),
        (lambda: box_iou([0, 0, 1], [0, 0, 1, 1]), "a must have shape"),
        (lambda: box_iou([0, 0, 1, 1], [2, 0, 1, 1]), "b must have x2 >= x1"),
        (lambda: box_iou([0, 0, np.nan, 1], [0, 0, 1, 1]), "a must be finite"),
        (lambda: box_to_pixels([0, 0, 1, 1], 0, 10), "width"),
        (lambda: box_to_pixels([0, 0, 1, 1], 10, 10, scale=-1), "scale"),
        (lambda: parse_choice("A", 0), r"n_options.*\[1, 26\]"),
        (lambda: parse_choice("A", 27), "n_options"),
        (lambda: multiple_choice_accuracy(["A"], ["E"], 4), r"answers\[0\]"),
        (lambda: multiple_choice_accuracy(["A", "B"], ["A", "B"], [4]), "n_options and answers"),
        (lambda: relative_score(50.0, 0.0), "baseline"),
        (lambda: relative_score(float("nan"), 50.0), "score"),
        (lambda: mme_scores(pd.DataFrame({"subtask": ["count"]})), "missing columns"),
        (lambda: mme_scores(pd.DataFrame(_mme_rows("counting", "i", [("Yes", "Yes")] * 2)),
                            require_all_subtasks=False), "unknown MME subtask"),
        (lambda: mme_scores(pd.DataFrame(_mme_rows("count", "i", [("Yes", "Yes")] * 2))), "require_all_subtasks"),
        (lambda: mme_scores(pd.DataFrame(_mme_rows("count", "i", [("Yes", "Yes")] * 3)),
                            require_all_subtasks=False), "exactly 2 questions"),
        (lambda: mme_scores(pd.DataFrame(_mme_rows("count", "i", [("Yes", "Maybe")] * 2)),
                            require_all_subtasks=False), "answer"),
    ],
)
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_relative_errors_name_the_baseline():
    df = _frame({"unpruned": {"GQA": 60.0}, "m": {"GQA": 50.0, "MME": 1500.0}})
    with pytest.raises(ValueError, match=r"baseline 'unpruned' has no score for benchmark\(s\) \['MME'\]"):
        average_relative(df)
    with pytest.raises(ValueError, match="baseline method 'full' is not in df"):
        average_relative(df, baseline="full")
    with pytest.raises(ValueError, match="several scores"):
        average_relative(pd.concat([df, df]))
    with pytest.raises(ValueError, match="missing columns"):
        average_relative(df.rename(columns={"score": "value"}))
    with pytest.raises(ValueError, match="finite and > 0"):
        average_relative(_frame({"unpruned": {"GQA": 0.0}, "m": {"GQA": 1.0}}))


def test_non_string_text_raises_type_error():
    with pytest.raises(TypeError, match="text must be a str"):
        normalize_answer(3)
