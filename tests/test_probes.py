"""Model runs that are not the answer grid: position interventions, blind controls, batch size, padding."""

import pandas as pd
import pytest
import torch

from tpx import probes
from tpx.analysis import protocol
from tpx.data import load_samples
from tpx.evaluate import evaluate, model_inputs


def test_visual_position_ids_reverse_only_the_image_span():
    ids = torch.tensor([[0, 0, 5, 9, 9, 9, 6], [0, 5, 7, 9, 9, 9, 6]])
    mask = (ids != 0).long()
    image = (ids == 9).nonzero()[:, 1].view(2, -1)
    natural = probes.visual_position_ids(mask, image)
    assert natural.tolist() == [[0, 0, 0, 1, 2, 3, 4], [0, 0, 1, 2, 3, 4, 5]]
    rev = probes.visual_position_ids(mask, image, "reverse")
    assert rev.tolist() == [[0, 0, 0, 3, 2, 1, 4], [0, 0, 1, 4, 3, 2, 5]]
    with pytest.raises(ValueError, match="order must be one of"):
        probes.visual_position_ids(mask, image, "shuffle")


def test_visual_position_ids_reverse_every_mrope_component():
    """M-RoPE ids (P, B, T): each component's image ids reversed, the text's kept."""
    mask = torch.ones(1, 6, dtype=torch.long)
    own = torch.tensor([[[0, 1, 1, 1, 1, 3]], [[0, 1, 1, 2, 2, 3]], [[0, 1, 2, 1, 2, 3]]])  # t, h, w of a 2×2 grid
    image = torch.tensor([[1, 2, 3, 4]])
    rev = probes.visual_position_ids(mask, image, "reverse", own)
    assert rev[:, 0].tolist() == [[0, 1, 1, 1, 1, 3], [0, 2, 2, 1, 1, 3], [0, 2, 1, 2, 1, 3]]
    assert probes.visual_position_ids(mask, image, "natural", own) is own


def test_padding_check_right_pads_every_per_token_input():
    """Qwen2-VL's processor also returns `mm_token_type_ids` (B, T): right padding must move it with the ids."""
    ids = torch.tensor([[0, 0, 5, 7], [0, 5, 6, 7]])
    inputs = {"input_ids": ids, "attention_mask": (ids != 0).long(), "mm_token_type_ids": (ids == 5).long(),
              "pixel_values": torch.ones(3, 4)}
    out = probes._right_padded(inputs)
    assert out["input_ids"].tolist() == [[5, 7, 0, 0], [5, 6, 7, 0]]
    assert out["mm_token_type_ids"].tolist() == [[1, 0, 0, 0], [1, 0, 0, 0]]
    assert out["pixel_values"] is inputs["pixel_values"]


def test_natural_positions_reproduce_the_evaluated_kept_sets(tiny):
    """The probe's natural order is what generate uses: the same kept sets as `evaluate`."""
    model, processor = tiny
    samples = load_samples("organism", n=2, tasks=["exist", "count"])
    probe = probes.kept_under_positions(model, processor, samples, "fastv", retention=0.25, layer=1, batch_size=4,
                                        progress=False)
    rows = evaluate(model, processor, samples, methods=["fastv"], retentions=[0.25], layer=1, batch_size=4,
                    max_new_tokens=1, progress=False)
    rows = rows[rows.method == "fastv"]
    assert [list(k) for k in probe.kept] == [list(k) for k in rows.kept]
    assert set(probe.label) == {"fastv natural"} and set(probe.layer) == {1}
    rev = probes.kept_under_positions(model, processor, samples, "fastv", retention=0.25, layer=1, order="reverse",
                                      blind="noise", batch_size=4, progress=False)
    assert set(rev.label) == {"fastv reverse noise"} and len(rev) == len(samples)


@pytest.mark.parametrize("family", ["tiny", "tiny-qwen2-vl"])
def test_several_orders_at_once_equal_one_call_each_and_encode_images_once(family, one_thread, monkeypatch):
    """Orders asked together give the rows of separate calls; the images of a batch are encoded once for all of
    them (twice per order before), except for a method that reads the tower itself (hook V)."""
    from tpx.models import load

    model, processor = load(family)
    samples = load_samples("organism", n=2, tasks=["exist", "count"])
    base = model.base_model
    real, runs = base.get_image_features, []
    monkeypatch.setattr(type(base), "get_image_features",
                        lambda self, *a, **k: runs.append(1) or real(*a, **k))
    both = probes.kept_under_positions(model, processor, samples, "fastv", retention=0.5, layer=1, batch_size=4,
                                       order=probes.ORDERS, blind="blank", progress=False)
    assert len(runs) == 1
    alone = pd.concat([probes.kept_under_positions(model, processor, samples, "fastv", retention=0.5, layer=1,
                                                   batch_size=4, order=o, blind="blank", progress=False)
                       for o in probes.ORDERS], ignore_index=True)
    assert len(runs) == 1 + len(probes.ORDERS)
    pd.testing.assert_frame_equal(both, alone)
    assert list(both.order) == [o for o in probes.ORDERS for _ in samples]
    with pytest.raises(ValueError, match="order must be one of"):
        probes.kept_under_positions(model, processor, samples, "fastv", retention=0.5, layer=1, order=["sideways"])


@pytest.mark.parametrize("family", ["tiny-llava-next", "tiny-qwen2-vl"])
def test_natural_positions_are_the_models_own_on_other_families(family, one_thread):
    """Qwen2-VL's natural ids are its M-RoPE ids (captured from the model), LLaVA-NeXT's 1-D ones: the probe keeps
    what `evaluate` keeps; reversing the image span's ids (newlines included) moves the kept set."""
    from tpx.models import load

    model, processor = load(family)
    samples = load_samples("organism", n=2, tasks=["exist", "count"])
    natural = probes.kept_under_positions(model, processor, samples, "fastv", retention=0.5, layer=1, batch_size=4,
                                          progress=False)
    rows = evaluate(model, processor, samples, methods=["fastv"], retentions=[0.5], layer=1, batch_size=4,
                    max_new_tokens=1, progress=False)
    assert [list(k) for k in natural.kept] == [list(k) for k in rows[rows.method == "fastv"].kept]
    reverse = probes.kept_under_positions(model, processor, samples, "fastv", retention=0.5, layer=1,
                                          order="reverse", batch_size=4, progress=False)
    assert [list(k) for k in reverse.kept] != [list(k) for k in natural.kept]


def test_noise_images_are_seeded_and_differ_from_blank(tiny):
    model, processor = tiny
    samples = load_samples("organism", n=1, tasks=["exist"])
    a = model_inputs(processor, samples, model, "noise")["pixel_values"]
    b = model_inputs(processor, samples, model, "noise")["pixel_values"]
    c = model_inputs(processor, samples, model, "blank")["pixel_values"]
    assert torch.equal(a, b) and not torch.equal(a, c) and a.std() > c.std()


@pytest.fixture(scope="module")
def samples():
    from tpx.data import load_samples

    return load_samples("organism", n=2, tasks=["exist", "locate"])


RUN = dict(max_new_tokens=2, progress=False)


def test_blind_runs_and_batch_sizes(tiny, samples):
    blind = probes.blind_runs(*tiny, samples, batch_size=4, **RUN)
    assert sorted(set(blind.blind)) == ["", "blank", "no_image", "noise"] and len(blind) == 4 * len(samples)
    assert list(protocol.vision_need(blind).columns) == ["image", "blank", "no_image", "noise", "need"]
    sizes = probes.batch_size_runs(*tiny, samples, [1, 4], [None, "fastv"], 0.25, **RUN)
    table = protocol.batch_size_table(sizes)
    assert (table.xs(4, level="batch_size")["agree"] >= 0).all() and len(table) == 4
    reused = probes.batch_size_runs(*tiny, samples, [4], [None, "fastv"], 0.25, reuse=sizes[sizes.batch_size == 1],
                                      reuse_batch_size=4, **RUN)
    assert reused.drop(columns="batch_size").equals(sizes[sizes.batch_size == 1].drop(columns="batch_size"))


def test_padding_check_refuses_pruned_right_padding(tiny, samples):
    df = probes.padding_check(*tiny, samples, [None, "fastv"], 0.25, batch_size=4, max_new_tokens=2,
                                progress=False)
    table = protocol.padding_table(df)
    assert "left-padded" in table.loc[("fastv", "right"), "error"]
    assert table.loc[("fastv", "left"), "error"] == "" and table.loc[("unpruned", "right"), "error"] == ""
    assert table.loc[("unpruned", "left"), "agree"] == 100


def test_right_padded_moves_padding_to_the_end():
    inputs = {"input_ids": torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]]),
              "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]), "pixel_values": torch.ones(2)}
    out = probes._right_padded(inputs)
    assert out["input_ids"].tolist() == [[5, 6, 0, 0], [7, 8, 9, 10]]
    assert out["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert out["pixel_values"] is inputs["pixel_values"]


def test_rope_frequencies_follow_the_layer_type_on_gemma3(one_thread):
    """Gemma 3 keeps one rotary per layer type: a sliding layer's θ come from the local base, a full layer's from
    the global one; a layer outside the decoder is refused."""
    from tpx.models import adapter_for, load

    model, _ = load("tiny-gemma3")
    decoder = adapter_for(model).decoder
    types = [decoder.layer_type(i) for i in range(decoder.n_layers)]
    sliding, full = types.index("sliding_attention"), types.index("full_attention")
    local = probes.rope_frequencies(model, layer=sliding)
    glob = probes.rope_frequencies(model, layer=full)
    d = 2 * local.numel()
    base = model.config.text_config.rope_parameters["sliding_attention"]["rope_theta"]
    torch.testing.assert_close(local, 1.0 / base ** (torch.arange(0, d, 2).float() / d))
    assert not torch.equal(local, glob)
    with pytest.raises(ValueError, match="layer must be in"):
        probes.rope_frequencies(model, layer=decoder.n_layers)
