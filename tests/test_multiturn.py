"""Two-turn conversations under pruning, against the mask reference on both turns (tiny LLaVA and tiny Qwen2-VL).

Two ways to ask a second question, both inside one `tpx.pruning` context:

1. **Re-prefill**: generate from the whole conversation again (turn 1, its answer, turn 2 with a new image),
   no cache. The second prefill must choose afresh over the new layout — the first turn's kept indices must
   not be reused for the new image tokens — so its selection equals that of a fresh context on the same input,
   and its answer equals the mask reference built from its own selection.
2. **Continue the cache** (text-only turn 2, hook L): the new tokens attend to what the first prefill kept;
   the answer equals the unpruned model on the whole conversation with turn 1's dropped positions masked.
   Where that cannot be run correctly (a cache pruned before layer 0, new image tokens), the engine refuses.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import PROMPTS, QUESTIONS, QWEN_IMAGE, QWEN_PROMPT, random_array_image, random_image
from reference import MaskReference, greedy, reference_generate, reference_stages, spy

import tpx
import tpx.models
from tpx.models import tiny, tiny_qwen2_vl

N_NEW = 3
RETENTION = {"pdrop": 0.5}


@pytest.fixture(scope="module")
def families(one_thread):
    return {"llava": tiny(attn_implementation="sdpa", seed=1), "qwen2_vl": tiny_qwen2_vl(attn_implementation="sdpa", seed=1)}


def _images(family: str, seed: int, n: int) -> list:
    if family == "llava":
        return [random_image(seed + i) for i in range(n)]
    return [random_array_image(seed + i, (168, 224)) for i in range(n)]


def _turns(family: str, processor, batch: int, new_image: bool, seed: int = 30):
    """Turn-1 inputs and, for a re-prefill, the whole conversation's inputs (an answer, a second question and,
    if `new_image`, a second image per row), left-padded."""
    processor.tokenizer.padding_side = "left"
    firsts = _images(family, seed, batch)
    seconds = _images(family, seed + 100, batch) if new_image else []
    if family == "llava":
        turn1 = [PROMPTS[i % 2] for i in range(batch)]
        image2 = "<image>\n" if new_image else ""
        turn2 = [f"{t} a square.</s>USER: {image2}And what colour is it? ASSISTANT:" for t in turn1]
    else:
        turn1 = [QWEN_PROMPT.format(QWEN_IMAGE, QUESTIONS[i % 2]) for i in range(batch)]
        image2 = QWEN_IMAGE if new_image else ""
        turn2 = [f"{t}a square<|im_end|>\n" + QWEN_PROMPT.format(image2, "And what colour is it?") for t in turn1]
    first = dict(processor(images=firsts, text=turn1, return_tensors="pt", padding=True))
    per_row = [[a, b] for a, b in zip(firsts, seconds)] if new_image else [[a] for a in firsts]
    both = dict(processor(images=[im for row in per_row for im in row], text=turn2, return_tensors="pt", padding=True))
    return first, both


def _spied(name: str):
    method = tpx.get_method(name)
    outputs: list = []
    return dataclasses.replace(method, selector=spy(method.selector, outputs)), outputs


def _check_turn(model, inputs, run, entries, positions_at, outputs, tokens, steps, prompt_len=None):
    """The turn's greedy tokens and every step's logits equal the mask reference built from its own selection."""
    visual = tpx.models.layout(model, inputs).positions
    stages = reference_stages(run, outputs, visual, entries=entries, stage_positions=positions_at)
    ref = MaskReference(model, stages, prompt_len or inputs["input_ids"].shape[1])
    try:  # LLaVA: the 1-D positions generate() uses; Qwen2-VL derives its 3-D ones from the inputs
        ref_tokens, ref_steps = reference_generate(model, inputs, ref, N_NEW, positions="pixel_values" in inputs
                                                   and "image_grid_thw" not in inputs)
    finally:
        ref.remove()
    assert torch.equal(tokens, ref_tokens)
    for a, b in zip(steps, ref_steps, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


EVERY = [(name, hook) for name in tpx.list_methods() for hook in tpx.get_method(name).hooks]
REPREFILL = [("llava", n, h) for n, h in EVERY] + [("qwen2_vl", n, h) for n, h in
                                                    (("fastv", "L"), ("pooling", "E"), ("dart", "L"), ("downsample", "V"))]


@pytest.mark.parametrize(("family", "name", "hook"), REPREFILL, ids=["-".join(c) for c in REPREFILL])
def test_second_turn_prefill_chooses_afresh_and_matches_mask_reference(families, family, name, hook):
    model, processor = families[family]
    new_image = hook != "V"  # hook V reads one image per batch row
    first, both = _turns(family, processor, 2, new_image)
    spied, outputs = _spied(name)
    kw = dict(retention=RETENTION.get(name, 0.25), hook=hook, seed=7)
    with torch.no_grad():
        with tpx.pruning(model, spied, **kw) as run:
            tokens1, steps1 = greedy(model, first, N_NEW)
            n1, at1, entries1 = len(outputs), dict(run.stage_positions), list(run.trace)
            tokens2, steps2 = greedy(model, both, N_NEW)
            entries2 = run.trace[len(entries1):]
        out1, out2 = outputs[:n1], outputs[n1:]
        _check_turn(model, first, run, entries1, at1, out1, tokens1, steps1)
        _check_turn(model, both, run, entries2, run.stage_positions, out2, tokens2, steps2)
        layout2 = tpx.models.layout(model, both)
        assert entries2[0].n_visual == layout2.n_visual == (2 if new_image else 1) * entries1[0].n_visual
        if not tpx.get_method(name).is_seeded():  # seeded methods draw on from the run's generator, by design
            with tpx.pruning(model, name, **kw) as fresh:
                greedy(model, both, 1)  # the same call as the turn (generate: its position ids)
            for a, b in zip(entries2, fresh.trace, strict=True):
                assert torch.equal(a.kept, b.kept)


CONTINUE = [("llava", n, "L") for n, h in EVERY if h == "L"] + [("qwen2_vl", "fastv", "L"), ("qwen2_vl", "dart", "L")]


def _continued(first: dict, sequences: torch.Tensor, processor, family: str) -> dict:
    """The whole conversation after turn 1's answer: its tokens, then a text-only second question."""
    text = " USER: And what colour is it? ASSISTANT:" if family == "llava" else \
        "<|im_end|>\n" + QWEN_PROMPT.format("", "And what colour is it?")
    q2 = processor.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    b = sequences.shape[0]
    ids = torch.cat([sequences, q2.expand(b, -1)], 1)
    out = {k: v for k, v in first.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    out["input_ids"] = ids
    out["attention_mask"] = torch.cat([first["attention_mask"], torch.ones(b, ids.shape[1] - first["input_ids"].shape[1],
                                                                            dtype=first["attention_mask"].dtype)], 1)
    if "mm_token_type_ids" in first:
        types = first["mm_token_type_ids"]
        out["mm_token_type_ids"] = torch.cat([types, torch.zeros(b, ids.shape[1] - types.shape[1], dtype=types.dtype)], 1)
    return out


@pytest.mark.parametrize(("family", "name", "hook"), CONTINUE, ids=["-".join(c) for c in CONTINUE])
def test_second_turn_from_the_pruned_cache_matches_mask_reference(families, family, name, hook):
    model, processor = families[family]
    first, _ = _turns(family, processor, 2, new_image=False)
    spied, outputs = _spied(name)
    pad = model.config.text_config.pad_token_id
    gen = dict(max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False, output_logits=True,
               return_dict_in_generate=True, pad_token_id=pad)
    with torch.no_grad():
        with tpx.pruning(model, spied, retention=RETENTION.get(name, 0.25), hook=hook, seed=7) as run:
            o1 = model.generate(**first, **gen)
            both = _continued(first, o1.sequences, processor, family)
            o2 = model.generate(**{k: v for k, v in both.items() if k not in ("pixel_values", "image_grid_thw")},
                                cache=o1.cache, **gen)
        assert len(run.trace) == len(run.plan.stages)  # one prefill: the second turn continued its cache
        length = first["input_ids"].shape[1]
        tokens1, tokens2 = o1.sequences[:, length:], o2.sequences[:, both["input_ids"].shape[1]:]
        _check_turn(model, first, run, run.trace, run.stage_positions, outputs, tokens1, o1.logits)
        _check_turn(model, both, run, run.trace, run.stage_positions, outputs, tokens2, o2.logits, prompt_len=length)


def test_continuing_a_cache_pruned_before_layer_0_is_refused(families):
    model, processor = families["llava"]
    first, _ = _turns("llava", processor, 1, new_image=False)
    pad = model.config.text_config.pad_token_id
    gen = dict(max_new_tokens=N_NEW, do_sample=False, return_dict_in_generate=True, pad_token_id=pad)
    with torch.no_grad(), tpx.pruning(model, "pooling", retention=0.25, hook="E") as run:
        o1 = model.generate(**first, **gen)
        both = _continued(first, o1.sequences, processor, "llava")
        with pytest.raises(ValueError, match="'pooling' at hook E pruned the cache before decoder layer 0"):
            model.generate(input_ids=both["input_ids"], attention_mask=both["attention_mask"], cache=o1.cache, **gen)
    assert len(run.trace) == 1


def test_continuing_a_cache_with_new_image_tokens_is_refused(families):
    model, processor = families["llava"]
    first, _ = _turns("llava", processor, 1, new_image=False)
    pad = model.config.text_config.pad_token_id
    gen = dict(max_new_tokens=N_NEW, do_sample=False, return_dict_in_generate=True, pad_token_id=pad)
    turn2 = processor(images=[random_image(77)], text=["USER: <image>\nAnd this one? ASSISTANT:"], return_tensors="pt")
    with torch.no_grad(), tpx.pruning(model, "fastv", retention=0.25) as run:
        o1 = model.generate(**first, **gen)
        ids = torch.cat([o1.sequences, turn2["input_ids"]], 1)
        with pytest.raises(ValueError, match="new image tokens, which tpx would not prune"):
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=turn2["pixel_values"],
                           cache=o1.cache, **gen)
    assert len(run.trace) == 1
