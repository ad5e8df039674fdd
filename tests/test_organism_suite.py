"""The organism suite: determinism, answers agree with what was drawn, disjoint splits, priors."""

import hashlib

import numpy as np
import pytest

from tpx.organism import draw, font, suite, tasks

N = 12  # samples per task and split: keeps the file to a few seconds


@pytest.fixture(scope="module")
def val():
    return suite.build("val", N)


def _digest(sample):
    return hashlib.sha1(np.asarray(sample.image).tobytes()).hexdigest()


def test_same_seed_same_sample():
    for task in tasks.TASKS:
        a, b = suite.make_sample(task, "test", 7), suite.make_sample(task, "test", 7)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert (a.question, a.answer, a.meta) == (b.question, b.answer, b.meta)
    assert suite.make_sample("count", "test", 7).question != suite.make_sample("count", "test", 8).question or \
        _digest(suite.make_sample("count", "test", 7)) != _digest(suite.make_sample("count", "test", 8))


def test_image_shape_and_grid(val):
    for s in val:
        assert s.image.size == (draw.IMAGE, draw.IMAGE) and s.image.mode == "RGB"
        assert s.meta["grid"] == [12, 12]


def test_splits_disjoint():
    digests = {split: {_digest(s) for s in suite.build(split, 6)} for split in suite.SPLITS}
    assert not digests["train"] & digests["val"]
    assert not digests["train"] & digests["test"]
    assert not digests["val"] & digests["test"]


def _objects(s):
    return s.meta["objects"]


def test_objects_are_drawn_in_their_colour(val):
    for s in val:
        img = np.asarray(s.image).astype(int)
        for o in _objects(s):
            x0, y0, x1, y1 = o["box"]
            patch = img[y0:y1, x0:x1]
            close = (np.abs(patch - np.array(draw.COLOURS[o["colour"]])).max(-1) <= 20).mean()
            assert close > 0.3, (s.question, o)


def test_count_answers_match_objects(val):
    for s in (s for s in val if s.task == "count"):
        objs = _objects(s)
        words = s.question.split()
        if s.question == "how many objects are there ?":
            n = len(objs)
        elif words[2] in tasks.PLURAL.values():
            shape = {v: k for k, v in tasks.PLURAL.items()}[words[2]]
            n = sum(o["shape"] == shape for o in objs)
        else:
            n = sum(o["colour"] == words[2] for o in objs)
        assert s.answer == str(n)


def test_locate_cell_holds_the_object(val):
    for s in (s for s in val if s.task == "locate"):
        r, c = int(s.answer.split()[0][1:]), int(s.answer.split()[1][1:])
        x0, y0, x1, y1 = s.meta["box"]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        assert c * 8 <= cx < (c + 1) * 8 + 1e-9 and r * 8 <= cy < (r + 1) * 8 + 1e-9
        assert suite.score(s, s.answer)
        assert not suite.score(s, f"r{(r + 6) % 12} c{(c + 6) % 12}")


def test_read_answer_is_the_glyph_drawn(val):
    for s in (s for s in val if s.task == "read"):
        x0, y0, x1, y1 = s.meta["evidence"][0]
        ink = np.asarray(s.image)[y0:y1, x0:x1].min(-1) >= 225
        assert np.array_equal(ink, font.bitmap(s.answer))


def test_exist_relation_attribute_anchor_blind(val):
    for s in val:
        objs, w = _objects(s), s.question.split()
        pairs = {(o["colour"], o["shape"]) for o in objs}
        if s.task == "exist":
            assert ((w[3], w[4]) in pairs) == (s.answer == "yes")
        elif s.task == "attribute" and w[1] == "colour":
            assert [o["colour"] for o in objs if o["shape"] == w[4]] == [s.answer]
        elif s.task == "attribute":
            assert [o["shape"] for o in objs if o["colour"] == w[4]] == [s.answer]
        elif s.task == "relation":
            a, b = s.meta["evidence"]
            d = {"left": b[0] + b[2] - a[0] - a[2], "right": a[0] + a[2] - b[0] - b[2],
                 "above": b[1] + b[3] - a[1] - a[3], "below": a[1] + a[3] - b[1] - b[3]}[s.meta["relation"]]
            assert (d > 0) == (s.answer == "yes") and abs(d) >= 2 * tasks.RELATION_MARGIN
        elif s.task == "anchor":
            inside = [o for o in objs if o["panel"] == w[2]]
            if w[4] == "is":
                assert ((w[7], w[8]) in {(o["colour"], o["shape"]) for o in inside}) == (s.answer == "yes")
            else:
                assert [o["colour"] for o in inside if o["shape"] == w[8]] == [s.answer]
        elif s.task == "blind" and w[2] == "plus":
            assert int(s.answer) == int(w[1]) + int(w[3])


def test_patch_labels_mark_the_evidence():
    rng = np.random.default_rng(3)
    scene = draw.make_scene(rng, glyph=True)
    g = scene.glyphs[0]
    cx, cy = (g.box[0] + g.box[2]) // 2, (g.box[1] + g.box[3]) // 2
    assert scene.labels["char"][cy // 8, cx // 8] == 1 + font.CHARS.index(g.char)
    for o in scene.objects:
        assert scene.labels["centre"][o.cell] == 1


def test_priors_computed():
    majority = {t: suite.question_only_answers(t, 400) for t in tasks.TASKS}
    prior = suite.prior_accuracy(suite.build("test", 20), majority)
    assert set(prior) == set(tasks.TASKS)
    assert all(0.0 <= v <= 1.0 for v in prior.values())
    assert prior["read"] <= 0.5 and prior["locate"] <= 0.5


# ---- the haystack option of the panel task (Q3's Visual Haystack analogue) ---------------------------------

# sha1 over suite.build("val", 3), anchor test 0..19 and five bare panel scenes + anchor questions, taken from
# the code the organism was trained on: the optional haystack must leave the default draws bit for bit alone
DEFAULT_DIGEST = "a143c72d18bccf1d2ef3e430f78426731b08bcdc"


def test_defaults_are_bit_identical_to_the_training_distribution():
    import json

    h = hashlib.sha1()
    for s in suite.build("val", 3) + [suite.make_sample("anchor", "test", i) for i in range(20)]:
        h.update(np.asarray(s.image).tobytes())
        h.update(json.dumps([s.question, s.answer, s.meta], sort_keys=True).encode())
    for k in range(5):
        rng = np.random.default_rng([7, k])
        sc = draw.make_panel_scene(rng)
        h.update(sc.image.tobytes())
        h.update(repr((sc.objects, sc.glyphs, sc.panels)).encode())
        for v in sc.labels.values():
            h.update(v.tobytes())
        h.update(repr(tasks.anchor(sc, rng)).encode())
        h.update(repr(rng.random()).encode())
    assert h.hexdigest() == DEFAULT_DIGEST


def test_haystack_four_is_the_default_sample():
    for i in range(6):
        a, b = suite.make_sample("anchor", "test", i), suite.make_sample("anchor", "test", i, haystack=4)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert (a.question, a.answer) == (b.question, b.answer)
        assert b.meta == {**a.meta, "haystack": 4, "filled": list(draw.PANEL_LETTERS)}


@pytest.mark.parametrize("haystack", [1, 2, 3])
def test_haystack_fills_that_many_panels_and_names_one(haystack):
    for i in range(15):
        s = suite.make_sample("anchor", "val", i, haystack=haystack)
        assert s.meta["haystack"] == haystack and len(s.meta["filled"]) == haystack
        holding = {o["panel"] for o in s.meta["objects"]}
        assert holding <= set(s.meta["filled"]) and s.meta["panel"] in holding
        assert [g["char"] for g in s.meta["glyphs"]] == list(draw.PANEL_LETTERS)  # every letter still drawn
        words = s.question.split()
        assert words[2] == s.meta["panel"]
        inside = [o for o in s.meta["objects"] if o["panel"] == words[2]]
        if words[4] == "is":
            assert ((words[7], words[8]) in {(o["colour"], o["shape"]) for o in inside}) == (s.answer == "yes")
        else:
            assert [o["colour"] for o in inside if o["shape"] == words[8]] == [s.answer]


def test_haystack_empty_panels_are_background():
    for i in range(8):
        s = suite.make_sample("anchor", "val", i, haystack=1 + i % 3)
        img = np.asarray(s.image).astype(int)
        saturated = (img.max(-1) - img.min(-1)) > 60  # objects are saturated colours; background and clutter grey
        for letter, (x0, y0, x1, y1) in s.meta["panels"].items():
            assert saturated[y0 + 12:y1 - 2, x0 + 2:x1 - 2].any() == (letter in s.meta["filled"])


def test_haystack_is_validated():
    for bad in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match="haystack"):
            draw.make_panel_scene(np.random.default_rng(0), haystack=bad)
    with pytest.raises(ValueError, match="panel tasks"):
        suite.make_sample("exist", "test", 0, haystack=2)
