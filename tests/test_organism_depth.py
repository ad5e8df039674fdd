"""Vision need by depth with the mask reference, on the shipped organism (the deep one uses the same code)."""

import pytest
import torch

from tpx.organism import depth, suite


@pytest.fixture(scope="module")
def organism(one_thread):
    import tpx

    return tpx.load("organism")


def _generate(model, processor, samples):
    tok, out = processor.tokenizer, []
    texts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]}],
        add_generation_prompt=True) for s in samples]
    enc = processor(images=[s.image for s in samples], text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        g = model.generate(**enc, max_new_tokens=6, do_sample=False)
    return [x.strip() for x in tok.batch_decode(g[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]


def test_keeping_everything_is_the_unpruned_model(organism):
    model, processor = organism
    samples = suite.build("test", 3)  # 24 samples, two left-padded batches of mixed lengths
    want = _generate(model, processor, samples)
    n_layers = len(model.model.language_model.layers)
    assert depth.greedy_keep(model, processor, samples, n_layers) == want
    assert depth.greedy_keep(model, processor, samples, 0, n_keep=10**6) == want


def test_one_token_from_layer_1_loses_the_image_but_not_blind(organism):
    model, processor = organism
    samples = suite.build("test", 12, ["read", "blind"])
    out = depth.profile(model, processor, samples, [1], seed=3)
    assert out["unpruned"]["read"] >= 0.9 and out["by_layer"][1]["read"] <= 0.5  # the digit lives in the image
    assert out["by_layer"][1]["blind"] == out["unpruned"]["blind"] == 1.0  # arithmetic needs no image
    assert out["relative"][1] == pytest.approx(out["by_layer"][1]["read"] / out["unpruned"]["read"], abs=1e-4)


def test_seeded_and_checked(organism):
    model, processor = organism
    samples = suite.build("test", 4, ["locate"])
    a = depth.greedy_keep(model, processor, samples, 1, n_keep=3, seed=5)
    assert a == depth.greedy_keep(model, processor, samples, 1, n_keep=3, seed=5)
    with pytest.raises(ValueError, match="layer must be in 0..4"):
        depth.greedy_keep(model, processor, samples, 5)
    with pytest.raises(ValueError, match="n_keep"):
        depth.greedy_keep(model, processor, samples, 1, n_keep=0)
