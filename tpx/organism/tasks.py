"""Question families of the organism suite, each mirroring a benchmark kind of the study.

Every generator takes a drawn `Scene` and a `numpy.random.Generator` and returns
`(question, answer, meta)`, or None when the scene cannot host the question (the caller
then draws a new scene). Answers are single words except `locate` ("r3 c7").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tpx.organism import draw, font
from tpx.organism.draw import Obj, Scene

PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
RELATIONS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
NEGATIVES = ("random", "popular", "adversarial")
PAIRS = [(c, s) for c in draw.COLOURS for s in draw.SHAPES]
PAIR_P = {(c, s): pc * ps for (c, pc) in zip(draw.COLOURS, draw.COLOUR_P) for (s, ps) in zip(draw.SHAPES, draw.SHAPE_P)}
RELATION_MARGIN = 8  # px between centres along the asked axis, so every relation answer is unambiguous


def _box(o: Obj) -> list[int]:
    return list(o.box)


def _unique(objects: list[Obj], key: Callable[[Obj], object]) -> list[Obj]:
    counts: dict[object, int] = {}
    for o in objects:
        counts[key(o)] = counts.get(key(o), 0) + 1
    return [o for o in objects if counts[key(o)] == 1]


def _choice(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _negative(rng, present: set, kind: str, near: list[Obj]):
    absent = [p for p in PAIRS if p not in present]
    if kind == "popular":
        absent.sort(key=lambda p: -PAIR_P[p])
        return _choice(rng, absent[:3])
    if kind == "adversarial":
        close = [p for p in absent if any(p[0] == o.colour or p[1] == o.shape for o in near)]
        if close:
            return _choice(rng, close)
    return _choice(rng, absent)


def exist(scene: Scene, rng: np.random.Generator):
    """POPE analogue: yes/no existence, negatives drawn randomly, popularly or adversarially."""
    if not scene.objects:
        return None
    present = {(o.colour, o.shape) for o in scene.objects}
    if rng.random() < 0.5:
        o = _choice(rng, scene.objects)
        pair, answer, kind = (o.colour, o.shape), "yes", None
        evidence = [_box(p) for p in scene.objects if (p.colour, p.shape) == pair]
    else:
        kind = NEGATIVES[int(rng.integers(3))]
        pair, answer, evidence = _negative(rng, present, kind, scene.objects), "no", []
    return f"is there a {pair[0]} {pair[1]} ?", answer, {"negative": kind, "evidence": evidence}


def attribute(scene: Scene, rng: np.random.Generator):
    """GQA analogue: the colour of the only object of a shape, or the shape of the only object of a colour."""
    by_shape = _unique(scene.objects, lambda o: o.shape)
    by_colour = _unique(scene.objects, lambda o: o.colour)
    if by_shape and (not by_colour or rng.random() < 0.5):
        o = _choice(rng, by_shape)
        return f"what colour is the {o.shape} ?", o.colour, {"asked": "colour", "evidence": [_box(o)]}
    if by_colour:
        o = _choice(rng, by_colour)
        return f"what shape is the {o.colour} one ?", o.shape, {"asked": "shape", "evidence": [_box(o)]}
    return None


def count(scene: Scene, rng: np.random.Generator):
    """Counting: all objects, objects of a shape, or objects of a colour."""
    r = rng.random()
    if r < 0.3:
        hits, q = scene.objects, "how many objects are there ?"
    elif r < 0.7:
        s = str(rng.choice(draw.SHAPES))
        hits, q = [o for o in scene.objects if o.shape == s], f"how many {PLURAL[s]} are there ?"
    else:
        c = str(rng.choice(list(draw.COLOURS)))
        hits, q = [o for o in scene.objects if o.colour == c], f"how many {c} objects are there ?"
    return q, str(len(hits)), {"evidence": [_box(o) for o in hits]}


def relation(scene: Scene, rng: np.random.Generator):
    """Spatial relation between two uniquely named objects (centres >= RELATION_MARGIN px apart on the axis)."""
    named = _unique(scene.objects, lambda o: (o.colour, o.shape))
    if len(named) < 2:
        return None
    i, j = rng.choice(len(named), 2, replace=False)
    a, b = named[int(i)], named[int(j)]
    dx, dy = a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]
    true = []
    if abs(dx) >= RELATION_MARGIN:
        true.append("left" if dx < 0 else "right")
    if abs(dy) >= RELATION_MARGIN:
        true.append("above" if dy < 0 else "below")
    if not true:
        return None
    rel = _choice(rng, true)
    answer = "yes" if rng.random() < 0.5 else "no"
    asked = rel if answer == "yes" else OPPOSITE[rel]
    q = f"is the {a.name} {RELATIONS[asked]} the {b.name} ?"
    return q, answer, {"relation": asked, "evidence": [_box(a), _box(b)]}


def read(scene: Scene, rng: np.random.Generator):
    """TextVQA / OCR analogue: the single digit glyph (2x2 to 3x3 patches)."""
    digits = [g for g in scene.glyphs if g.char in font.DIGITS]
    if len(digits) != 1:
        return None
    g = digits[0]
    return "what digit is written ?", g.char, {"evidence": [list(g.box)]}


def locate(scene: Scene, rng: np.random.Generator):
    """RefCOCO analogue: the grid cell (row, col) of a uniquely named object's centre; scored by cell hit."""
    named = _unique(scene.objects, lambda o: (o.colour, o.shape))
    if not named:
        return None
    o = _choice(rng, named)
    r, c = o.cell
    return f"where is the {o.name} ?", f"r{r} c{c}", {"box": _box(o), "evidence": [_box(o)]}


def anchor(scene: Scene, rng: np.random.Generator):
    """Visual Haystack analogue: the named panel decides where to look; distractors sit in other panels.

    The named panel is one of `scene.filled` (every panel, unless the scene was drawn with a smaller haystack).
    """
    if not scene.panels:
        return None
    p = str(_choice(rng, list(scene.filled or scene.panels)))
    inside = [o for o in scene.objects if o.panel == p]
    outside = [o for o in scene.objects if o.panel != p]
    meta = {"panel": p, "panel_box": list(scene.panels[p])}
    if rng.random() < 0.5:
        ask = _unique(inside, lambda o: o.shape)
        if not ask:
            return None
        o = _choice(rng, ask)
        return f"in panel {p} , what colour is the {o.shape} ?", o.colour, {**meta, "evidence": [_box(o)]}
    present = {(o.colour, o.shape) for o in inside}
    if inside and rng.random() < 0.5:
        o = _choice(rng, inside)
        pair, answer, ev = (o.colour, o.shape), "yes", [_box(o)]
    else:
        elsewhere = [(o.colour, o.shape) for o in outside if (o.colour, o.shape) not in present]
        if elsewhere and rng.random() < 0.5:
            pair, kind = _choice(rng, elsewhere), "elsewhere"
        else:
            pair, kind = _choice(rng, [q for q in PAIRS if q not in present]), "random"
        answer, ev, meta = "no", [], {**meta, "negative": kind}
    return f"in panel {p} , is there a {pair[0]} {pair[1]} ?", answer, {**meta, "evidence": ev}


def blind(scene: Scene, rng: np.random.Generator):
    """No-vision control: answerable from the question text alone (designed ceiling 1.0)."""
    r = rng.random()
    if r < 0.4:
        a, b = (int(v) for v in rng.integers(0, 5, 2))
        return f"what is {a} plus {b} ?", str(a + b), {"evidence": []}
    if r < 0.7:
        d = int(rng.integers(0, 9))
        return f"what number comes after {d} ?", str(d + 1), {"evidence": []}
    a, b = (int(v) for v in rng.choice(10, 2, replace=False))
    return f"is {a} more than {b} ?", "yes" if a > b else "no", {"evidence": []}


TASKS: dict[str, Callable] = {
    "exist": exist, "attribute": attribute, "count": count, "relation": relation,
    "read": read, "locate": locate, "anchor": anchor, "blind": blind,
}
PANEL_TASKS = ("anchor",)
FREE_TASKS = tuple(t for t in TASKS if t not in PANEL_TASKS)


def vocabulary() -> list[str]:
    """Every word a question or answer can contain (specials excluded), in a fixed order."""
    words = ["USER", ":", "ASSISTANT", "?", ",", "yes", "no", "is", "there", "a", "what", "colour", "the",
             "shape", "one", "how", "many", "are", "objects", "of", "above", "below", "left", "right",
             "digit", "written", "where", "in", "panel", "plus", "number", "comes", "after", "more", "than"]
    words += list(draw.COLOURS) + list(draw.SHAPES) + list(PLURAL.values()) + list(font.CHARS)
    words += [f"r{i}" for i in range(draw.GRID)] + [f"c{i}" for i in range(draw.GRID)]
    return list(dict.fromkeys(words))
