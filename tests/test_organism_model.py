"""The organism model: a real LLaVA that saves and reloads offline through the Auto classes."""

import numpy as np
import torch

from tpx.organism import batch as B, model as M, suite

MICRO = M.OrganismConfig(vision_hidden=32, vision_mlp=64, vision_layers=2, text_hidden=32, text_mlp=64)


def test_processor_matches_hand_built_inputs():
    tok = M.build_tokenizer()
    proc = M.build_processor(tok)
    s = suite.make_sample("locate", "val", 1)
    x = proc(images=s.image, text=M.PROMPT.format(question=s.question), return_tensors="pt")
    assert x["input_ids"][0].tolist() == B.prompt_ids(tok.get_vocab(), s.question)
    assert torch.equal(x["pixel_values"], B.pixels([np.asarray(s.image)]))
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]}]
    assert proc.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == \
        M.PROMPT.format(question=s.question)
    assert tok.image_token == "<image>" and tok.decode(tok.encode(s.answer, add_special_tokens=False)) == s.answer


def test_save_reload_offline_identical_logits(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    tok = M.build_tokenizer()
    model = M.build_model(tok, MICRO).eval()
    M.save(model, M.build_processor(tok), tmp_path)
    model2 = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    proc2 = AutoProcessor.from_pretrained(tmp_path)
    s = suite.make_sample("count", "val", 0)
    x = proc2(images=s.image, text=M.PROMPT.format(question=s.question), return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**x).logits, model2(**x).logits)
    assert type(model2).__name__ == "LlavaForConditionalGeneration"
    assert type(proc2.image_processor).__name__ == "CLIPImageProcessorPil"


def test_default_size_fits_budget():
    cfg = M.OrganismConfig()
    assert cfg.text_layers >= 4 and cfg.text_heads >= 4
    model = M.build_model(M.build_tokenizer(), cfg)
    assert sum(p.numel() for p in model.parameters()) * 4 <= 25e6
    assert model.config.text_config.model_type == "llama"
    assert model.config.vision_config.model_type == "clip_vision_model"
