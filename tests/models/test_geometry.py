"""The `geometry-*` models (`tpx.models.geometry`): each family's published processor and tower widths with a narrow
4-layer language model, so the notebooks run at the checkpoints' token layouts. Checked per family on the organism's
96-px images the notebooks feed them: the published widths are kept and only the language model's are narrowed;
the layout equals the processor's placeholders; retention 1.0 is bit-exact over a decode step and FastV at K = 2
equals the mask reference."""

from __future__ import annotations

import pytest
import torch
from reference import check_mask_reference, check_retention_one

import tpx
import tpx.models
from tpx.ask import prompt
from tpx.models import geometry, geometry_llava, geometry_qwen
from tpx.models.tiny_gemma3 import GEMMA3_4B
from tpx.organism import suite
from tpx.reproduce import GEOMETRY

# the published tower widths each geometry model must keep
TOWER = {"geometry-llava-1.5": geometry_llava.PUBLISHED["llava-1.5-7b"]["vision"],
         "geometry-llava-next": geometry_llava.PUBLISHED["llava-v1.6-mistral-7b"]["vision"],
         "geometry-internvl3": geometry_llava.PUBLISHED["internvl3-1b"]["vision"],
         "geometry-llava-onevision": geometry_llava.PUBLISHED["llava-onevision-qwen2-0.5b-ov"]["vision"],
         "geometry-gemma3": GEMMA3_4B["vision"],
         "geometry-qwen2-vl": geometry_qwen.PUBLISHED["Qwen/Qwen2-VL-2B-Instruct"]["vision_config"],
         "geometry-qwen3-vl": geometry_qwen.PUBLISHED["Qwen/Qwen3-VL-2B-Instruct"]["vision_config"]}
WIDTH_KEYS = ("hidden_size", "embed_dim", "intermediate_size", "num_attention_heads", "num_heads", "patch_size",
              "image_size")
MROPE = ("qwen2_vl", "qwen3_vl")


def test_the_names_are_the_reproduce_table_and_bad_names_are_refused():
    assert tuple(geometry.CHECKPOINTS) == GEOMETRY
    with pytest.raises(ValueError, match="name must be one of"):
        geometry.build("geometry-llava-2")
    with pytest.raises(ValueError, match="did you mean 'geometry-llava-1.5'"):
        tpx.load("geometry-llava-1.6")


def test_narrow_text_keeps_head_dim_and_grouping():
    llama = geometry_llava.PUBLISHED["llava-1.5-7b"]["text"]  # 32 heads of 128, no grouping
    assert geometry.narrow_text(llama) == {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 2,
                                           "num_key_value_heads": 2, "head_dim": 128}
    grouped = geometry.narrow_text(GEMMA3_4B["text"])  # 8 query heads share 4 key/value heads of 256
    assert grouped["head_dim"] == 256 and grouped["num_key_value_heads"] == 1 and grouped["hidden_size"] == 512


@pytest.mark.parametrize("name", GEOMETRY)
def test_geometry_model_keeps_the_tower_and_prunes_exactly(name, one_thread):
    model, processor = tpx.load(name)
    vision = model.config.vision_config.to_dict()
    for key in WIDTH_KEYS:
        if key in TOWER[name] and not (key == "hidden_size" and name == "geometry-qwen2-vl"):  # merger output
            assert vision[key] == TOWER[name][key], key
    text = model.config.text_config
    assert text.num_hidden_layers == geometry.TEXT_LAYERS and text.num_attention_heads == 2

    sample = suite.make_sample("count", "test", 3)
    inputs = dict(processor(images=[sample.image], text=[prompt(processor, sample.question)], return_tensors="pt"))
    layout = tpx.models.layout(model, inputs)
    fixed = 0 if layout.fixed is None else layout.fixed.shape[1]
    placeholders = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert layout.n_visual + fixed == placeholders > 0

    with torch.no_grad():
        check_retention_one(model, inputs, "fastv", "L", n_new=1)
        run = check_mask_reference(model, inputs, "fastv", "L", 0.25, n_new=1,
                                   positions=model.config.model_type not in MROPE)
    assert [e.layer for e in run.trace] == [2] and run.trace[0].n_keep < run.trace[0].n_visual
