"""Data loaders: the organism suite as `Sample`s, and every real benchmark from local parquet fixtures written
here in the lmms-lab hub schemas (images as PNG bytes), offline."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tpx import data
from tpx.data import MULTIPLE_CHOICE, SHORT_ANSWER, Sample, load_benchmark, load_samples


def png(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write(folder, rows: list[dict], features: dict, relpath: str) -> None:
    """One parquet file with the hub's features (the image column holds PNG bytes)."""
    import datasets

    feats = datasets.Features({k: v for k, v in features.items()})
    table = datasets.Dataset.from_list(rows, features=feats)
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(path))


def S(kind: str = "string"):
    import datasets

    return datasets.Value(kind)


def seq(kind: str = "string"):
    import datasets

    return datasets.Sequence(datasets.Value(kind))


def img():
    import datasets

    return datasets.Image()


def image(i: int) -> dict:
    return {"bytes": png(i), "path": None}


# ---- fixtures in the hub schemas --------------------------------------------------------------------------

def pope(tmp_path):
    rows = [{"id": str(i), "question_id": str(100 + i), "question": f"Is there a dog {i} in the image?",
             "answer": "yes" if i % 2 else "no", "image_source": f"COCO_{i}", "image": image(i),
             "category": ["random", "popular", "adversarial"][i % 3]} for i in range(9)]
    feats = {"id": S(), "question_id": S(), "question": S(), "answer": S(), "image_source": S(), "image": img(),
             "category": S()}
    write(tmp_path, rows, feats, "data/test-00000-of-00001.parquet")
    return tmp_path


def test_pope_local_folder_all_and_by_category(tmp_path):
    root = pope(tmp_path)
    all_ = load_benchmark("pope", path=root)
    assert len(all_) == 9 and {s.task for s in all_} == {"random", "popular", "adversarial"}
    s = all_[1]
    assert isinstance(s, Sample) and s.benchmark == "pope" and s.id == "101"
    assert s.prompt == f"Is there a dog 1 in the image?\n{SHORT_ANSWER}" and s.answers == ["yes"]
    assert s.image.mode == "RGB" and s.image.size == (40, 30)
    adv = load_benchmark("pope_adversarial", path=root)
    assert [x.id for x in adv] == ["102", "105", "108"] and {x.task for x in adv} == {"adversarial"}


def test_subset_is_seeded_and_in_dataset_order(tmp_path):
    root = pope(tmp_path)
    a = [s.id for s in load_benchmark("pope", path=root, n=4, seed=3)]
    b = [s.id for s in load_benchmark("pope", path=root, n=4, seed=3)]
    c = [s.id for s in load_benchmark("pope", path=root, n=4, seed=4)]
    assert a == b and len(a) == 4 and a == sorted(a) and a != c


def test_single_parquet_file(tmp_path):
    root = pope(tmp_path)
    samples = load_benchmark("pope", path=root / "data" / "test-00000-of-00001.parquet")
    assert len(samples) == 9


def test_gqa_joins_instructions_and_images(tmp_path):
    inst = [{"id": f"q{i}", "imageId": f"n{i % 2}", "question": f"What colour is thing {i}?", "answer": "red",
             "fullAnswer": "It is red."} for i in range(3)]
    write(tmp_path, inst, {"id": S(), "imageId": S(), "question": S(), "answer": S(), "fullAnswer": S()},
          "testdev_balanced_instructions/testdev-00000-of-00001.parquet")
    write(tmp_path, [{"id": f"n{i}", "image": image(i)} for i in range(2)], {"id": S(), "image": img()},
          "testdev_balanced_images/testdev-00000-of-00001.parquet")
    samples = load_benchmark("gqa", path=tmp_path)
    assert [s.id for s in samples] == ["q0", "q1", "q2"]
    assert samples[2].prompt.endswith(f"\n{SHORT_ANSWER}") and samples[2].metadata["image_id"] == "n0"
    assert np.array_equal(np.asarray(samples[0].image), np.asarray(samples[2].image))
    assert not np.array_equal(np.asarray(samples[0].image), np.asarray(samples[1].image))


def test_mme_replaces_yes_no_instruction(tmp_path):
    rows = [{"question_id": "code_reasoning/0020.png", "image": image(0), "category": "code_reasoning",
             "question": f"Is the output 3? Please answer yes or no.", "answer": a} for a in ("Yes", "No")]
    write(tmp_path, rows, {"question_id": S(), "image": img(), "question": S(), "answer": S(), "category": S()},
          "data/test-00000-of-00001.parquet")
    samples = load_benchmark("mme", path=tmp_path)
    assert samples[0].prompt == f"Is the output 3?\n{SHORT_ANSWER}"
    assert [s.answer for s in samples] == ["yes", "no"] and samples[0].id != samples[1].id
    assert {s.metadata["image_id"] for s in samples} == {"code_reasoning/0020.png"}


def test_textvqa_has_ocr_reference_and_vizwiz_unanswerable(tmp_path):
    feats = {"image_id": S(), "question_id": S("int32"), "question": S(), "image": img(), "answers": seq(),
             "ocr_tokens": seq()}
    write(tmp_path / "t", [{"image_id": "a", "question_id": 7, "question": "what brand is it?", "image": image(1),
                            "answers": ["nikon"] * 10, "ocr_tokens": ["nikon", "d90"]}], feats,
          "data/validation-00000-of-00001.parquet")
    t = load_benchmark("textvqa", path=tmp_path / "t")[0]
    assert t.prompt == f"What brand is it?\nReference OCR token: nikon, d90\n{SHORT_ANSWER}" and len(t.answers) == 10
    feats = {"question_id": S(), "image": img(), "question": S(), "answers": seq(), "category": S()}
    write(tmp_path / "v", [{"question_id": "VizWiz_val_1", "image": image(2), "question": "what is this?",
                            "answers": ["unanswerable"] * 10, "category": "unanswerable"}], feats,
          "data/val-00000-of-00001.parquet")
    v = load_benchmark("vizwiz", path=tmp_path / "v")[0]
    assert "respond with 'Unanswerable'" in v.prompt and v.prompt.endswith(SHORT_ANSWER)


def test_multiple_choice_prompts(tmp_path):
    feats = {"image": img(), "question": S(), "choices": seq(), "answer": S("int8"), "hint": S(), "subject": S()}
    write(tmp_path / "s", [{"image": image(3), "question": "Which is a mammal?", "choices": ["frog", "cat"],
                            "answer": 1, "hint": "Look closely.", "subject": "natural science"}], feats,
          "ScienceQA-IMG/test-00000-of-00001.parquet")
    s = load_benchmark("scienceqa_img", path=tmp_path / "s")[0]
    assert s.prompt == f"Context: Look closely.\nWhich is a mammal?\nA. frog\nB. cat\n{MULTIPLE_CHOICE}"
    assert s.answers == ["B"] and s.metadata["options"] == ["frog", "cat"]
    feats = {"index": S("int64"), "question": S(), "hint": S(), "answer": S(), "A": S(), "B": S(), "C": S(),
             "D": S(), "category": S(), "image": img(), "source": S(), "L2-category": S(), "comment": S(),
             "split": S()}
    write(tmp_path / "m", [{"index": 5, "question": "What is shown?", "hint": None, "answer": "C", "A": "a dog",
                            "B": "a cat", "C": "a car", "D": None, "category": "object", "image": image(4),
                            "source": "x", "L2-category": "y", "comment": None, "split": "dev"}], feats,
          "en/dev-00000-of-00001.parquet")
    m = load_benchmark("mmbench", path=tmp_path / "m")[0]
    assert m.prompt == f"What is shown?\nA. a dog\nB. a cat\nC. a car\n{MULTIPLE_CHOICE}" and m.answers == ["C"]


def test_refcoco_one_sample_per_expression_with_pixel_box(tmp_path):
    feats = {"question_id": S(), "image": img(), "question": S(), "answer": seq(), "segmentation": seq("float32"),
             "bbox": seq("float32"), "iscrowd": S("int8"), "file_name": S()}
    row = {"question_id": "r1", "image": image(5), "question": "", "answer": ["left dog", "brown dog"],
           "segmentation": [0.0], "bbox": [4.0, 5.0, 10.0, 20.0], "iscrowd": 0, "file_name": "x.jpg"}
    for name in ("refcoco", "refcoco+", "refcocog"):
        write(tmp_path / name, [row], feats, "data/val-00000-of-00001.parquet")
        samples = load_benchmark(name, path=tmp_path / name)
        assert [s.id for s in samples] == ["r1#0", "r1#1"] and samples[1].benchmark == name
        assert samples[0].metadata["box"] == [4.0, 5.0, 14.0, 25.0] and samples[0].metadata["width"] == 40
        assert samples[0].prompt.endswith(": left dog")


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"lmms-lab/POPE.*path="):
        load_benchmark("pope")
    with pytest.raises(FileNotFoundError, match="test-\\*.parquet"):
        load_benchmark("pope", path=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_benchmark("pope", path=tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown benchmark 'popee'"):
        load_benchmark("popee")


def test_organism_samples():
    samples = load_samples("organism", n=3, tasks=["exist", "locate"])
    assert [s.id for s in samples] == [f"{t}/test/{i}" for t in ("exist", "locate") for i in range(3)]
    assert all(s.benchmark == "organism" and s.prompt == s.question and len(s.answers) == 1 for s in samples)
    assert "box" in samples[3].metadata and samples[0].image.size == (96, 96)
    other = data.organism("exist", n=3, seed=1)
    assert [s.id for s in other] == [f"exist/test/{i}" for i in range(3, 6)]
    with pytest.raises(ValueError, match="unknown organism task"):
        data.organism("exits")
    with pytest.raises(ValueError, match="tasks= applies to the organism only"):
        load_samples("pope", tasks=["x"])


def test_import_downloads_and_imports_nothing_heavy():
    code = "import sys, tpx.data; assert 'datasets' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sample_picture_still_there():
    assert data.sample_picture().size == (512, 600)


def test_organism_anchor_haystack():
    four = load_samples("organism", n=3, tasks=["anchor"], haystack=4)
    default = load_samples("organism", n=3, tasks=["anchor"])
    assert [s.id for s in four] == [f"anchor/test/{i}/haystack4" for i in range(3)]
    assert [(s.question, s.answer) for s in four] == [(s.question, s.answer) for s in default]
    assert all("haystack" not in s.metadata for s in default)
    two = load_samples("organism", n=4, tasks="anchor", haystack=2)
    assert all(s.metadata["haystack"] == 2 and len(s.metadata["filled"]) == 2 for s in two)
    assert all({o["panel"] for o in s.metadata["objects"]} <= set(s.metadata["filled"]) for s in two)
    with pytest.raises(ValueError, match="panel tasks"):
        load_samples("organism", n=2, tasks=["anchor", "exist"], haystack=2)
    with pytest.raises(ValueError, match="haystack must be"):
        load_samples("organism", n=2, tasks=["anchor"], haystack=7)
    with pytest.raises(ValueError, match="haystack= applies to the organism"):
        load_samples("pope", haystack=2)


def test_unknown_names_suggest_the_closest(tmp_path):
    with pytest.raises(ValueError, match=r"unknown benchmark 'popee'; did you mean 'pope'\? known: organism, "):
        load_samples("popee")
    with pytest.raises(ValueError, match=r"unknown benchmark 'organsim'; did you mean 'organism'\?"):
        load_samples("organsim")
    with pytest.raises(ValueError, match=r"unknown benchmark 'xyz'; known: organism"):
        load_samples("xyz")
    with pytest.raises(ValueError, match=r"did you mean 'exist'\? known: exist, "):
        load_samples("organism", tasks=["exsit"])
    with pytest.raises(ValueError, match="not a hub benchmark"):
        load_benchmark("organism")


def test_organism_refuses_a_path(tmp_path):
    with pytest.raises(ValueError, match=r"path= applies to hub benchmarks.*got path="):
        load_samples("organism", path=tmp_path)


def test_replace_input_with_your_image_and_question(tmp_path):
    sample = load_samples("organism", n=1, tasks="read")[0]
    assert data.replace_input(sample) is sample
    asked = data.replace_input(sample, question="  What colour is the digit? ")
    assert (asked.question, asked.prompt, asked.answers, asked.task) == ("What colour is the digit?",) * 2 + ([], "yours")
    assert asked.image is sample.image
    path = tmp_path / "mine.png"
    path.write_bytes(png(3, (50, 20)))
    mine = data.replace_input(sample, path)
    assert mine.image.size == (50, 20) and mine.image.mode == "RGB"
    assert (mine.question, mine.prompt, mine.answers) == (sample.question, sample.prompt, [])
    assert data.replace_input(sample, str(path)).image.size == (50, 20)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        data.replace_input(sample, tmp_path / "nope.png")
    with pytest.raises(ValueError, match="question must not be empty"):
        data.replace_input(sample, question=" ")
