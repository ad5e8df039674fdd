"""The deep organism: Gemma-3-270M converted offline inside a LLaVA, packed training rows, LoRA, resumption.

The tests marked by the `gemma_dir` fixture need the `deep` extra (`pip install -e .[deep]`, which CI
installs): without it they fail with that command, they are never skipped. The conversion runs once per
machine (about a minute) into the git-ignored cache; later runs read it.
"""

import json

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, Gemma3TextConfig, LlavaConfig, LlavaForConditionalGeneration

from tpx.organism import batch as B, deep, deep_train as D, gemma, suite


@pytest.fixture(scope="module")
def gemma_dir(one_thread):
    return gemma.converted()


@pytest.fixture(scope="module")
def built(gemma_dir):
    processor = deep.build_processor(gemma_dir)
    vision_config, tower = deep.shallow_vision()
    model = deep.build_model(gemma_dir, vision_config, processor.tokenizer.convert_tokens_to_ids(deep.IMAGE_TOKEN))
    model.model.vision_tower.load_state_dict(tower)
    return model.eval(), processor


@pytest.fixture(scope="module")
def shipped(gemma_dir):
    """`tpx.load("organism-deep")`, assembled once for the module."""
    import tpx

    return tpx.load("organism-deep")


def _tiny_gemma_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    text = Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=5)).eval()


def test_conversion_is_the_pinned_gemma(gemma_dir):
    record = json.loads((gemma_dir / "conversion.json").read_text())
    assert record["gguf_sha256"] == gemma.GGUF_SHA256
    assert record["package"] == f"{gemma.PACKAGE}=={gemma.PACKAGE_VERSION}"
    config = json.loads((gemma_dir / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_key_value_heads"]) == (18, 640, 1)
    assert set(gemma.terms_files()) == {"NOTICE.md", "GEMMA_TERMS.html"}


def test_llava_text_path_is_the_standalone_gemma(built, gemma_dir):
    from transformers import Gemma3ForCausalLM

    model, processor = built
    reference = Gemma3ForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32).eval()
    ids = processor.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference(ids).logits)
    top3 = reference(ids).logits[0, -1].topk(3).indices  # pretrained: "Paris" is among the likeliest next words
    assert "▁Paris" in processor.tokenizer.convert_ids_to_tokens(top3)


def test_chat_template_and_image_placeholder(built):
    _, processor = built
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what digit is written ?"}]}],
        add_generation_prompt=True)
    assert text == f"{deep.IMAGE_TOKEN}\nwhat digit is written ?\nAnswer:"
    image = suite.make_sample("read", "val", 0).image
    ids = processor(images=[image], text=[text], return_tensors="pt").input_ids[0]
    image_id = processor.tokenizer.convert_tokens_to_ids(deep.IMAGE_TOKEN)
    assert ids[0] == processor.tokenizer.bos_token_id and int((ids == image_id).sum()) == B.N_VISUAL
    assert image_id not in processor.tokenizer("<unused 0> unused0 <unused0", add_special_tokens=False).input_ids


def test_packed_turns_equal_single_turn_prompts(built):
    """Ids of every packed turn are the processor's single-turn prompt; its hidden states match that prompt's."""
    model, processor = built
    enc = D.Encoder(processor.tokenizer)
    rng = np.random.default_rng([0, D.STREAM, 7, 0])
    scene, turns, _ = B.draw_packed(rng, 4, {t: 1.0 for t in suite.TASK_IDS})
    ids, weights, positions, turn = enc.packed(turns, 0.2)
    t = torch.tensor([turn])
    n_prefix = 1 + B.N_VISUAL
    with torch.no_grad():
        packed = model.model(input_ids=torch.tensor([ids]), attention_mask=B.turn_mask(t, t >= 0),
                             position_ids=torch.tensor([positions]),
                             pixel_values=B.pixels([scene.image])).last_hidden_state[0]
        for k, (q, a) in enumerate(turns, start=1):
            prompt = processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                add_generation_prompt=True)
            single = processor(images=[scene.pil()], text=[prompt + f" {a}"], return_tensors="pt")
            where = [i for i, x in enumerate(turn) if x == k][:-1]  # the turn without its <eos>
            assert single.input_ids[0, n_prefix:].tolist() == [ids[i] for i in where]
            got = model.model(**single).last_hidden_state[0, n_prefix:]
            scale = got.abs().max()
            assert (got - packed[where]).abs().max() <= 1e-5 * scale, (q, a)
    answers = [i for i, w in enumerate(weights) if w > 0]
    assert len(answers) == sum(len(enc.answer(a)) for _, a in turns)


def test_lora_starts_at_the_base_model_and_merges_exactly():
    model = _tiny_gemma_llava()
    ids = torch.randint(6, 128, (2, 9))
    with torch.no_grad():
        base = model(input_ids=ids).logits
    n = deep.add_lora(model, rank=4, alpha=8.0, seed=0)
    assert n == 2 * len(deep.LORA_TARGETS)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base)  # B = 0
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
        adapted = model(input_ids=ids).logits
        state = deep.lora_state(model)
        assert deep.merge_lora(model) == n
        merged = model(input_ids=ids).logits
    assert not torch.allclose(adapted, base, atol=1e-3)
    assert torch.allclose(merged, adapted, atol=1e-5)
    assert not any(isinstance(m, deep.LoRALinear) for m in model.modules())
    other = _tiny_gemma_llava()
    deep.add_lora(other, rank=4, alpha=8.0, seed=1)
    deep.load_lora(other, state)
    with torch.no_grad():
        assert torch.allclose(other(input_ids=ids).logits, adapted, atol=1e-6)


def test_lora_arguments_are_checked():
    model = _tiny_gemma_llava()
    with pytest.raises(ValueError, match="rank"):
        deep.add_lora(model, rank=0, alpha=1.0, seed=0)
    with pytest.raises(ValueError, match="lm_head"):
        deep.add_lora(model, rank=2, alpha=1.0, seed=0, targets=("q_proj", "lm_head"))


def test_lr_schedule_restarts_warmup_for_lora_and_decays():
    cfg = D.DeepConfig(proj_steps=10, warmup=5, decay_start=20, decay_steps=10)
    assert D.lr_scale(cfg, 0) == pytest.approx(0.2) and D.lr_scale(cfg, 9) == 1.0
    assert D.lr_scale(cfg, 10) == pytest.approx(0.2)  # LoRA starts with its own warmup
    assert D.lr_scale(cfg, 25) == pytest.approx(1 - 0.9 * 0.5) and D.lr_scale(cfg, 40) == pytest.approx(0.1)


def test_resume_continues_exactly(gemma_dir, tmp_path):
    """2 steps + resume to 3 gives the same tower, projector and LoRA factors as 3 steps straight."""
    base = dict(root=str(tmp_path), batch_size=1, n_questions=2, proj_steps=1, warmup=1, n_eval=1,
                eval_minutes=1e9)
    D.DeepTrainer(D.DeepConfig(run="a", max_steps=2, **base), gemma_dir=gemma_dir).fit()
    resumed = D.DeepTrainer(D.DeepConfig(run="a", max_steps=3, **base), resume=True, gemma_dir=gemma_dir)
    assert resumed.state["step"] == 2
    resumed.fit()
    straight = D.DeepTrainer(D.DeepConfig(run="b", max_steps=3, **base), gemma_dir=gemma_dir)
    initial = D.trained_state(straight.model)
    straight.fit()
    a, b = D.trained_state(resumed.model), D.trained_state(straight.model)
    assert a.keys() == b.keys() and any(k.startswith("lora.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["projector.linear_1.weight"], initial["projector.linear_1.weight"])
    assert not torch.equal(a["lora.layers.0.mlp.down_proj.lora_B"], initial["lora.layers.0.mlp.down_proj.lora_B"])
    files = sorted(p.name for p in (tmp_path / "a" / "ckpt").iterdir())
    assert files == ["optim.json", "optim.safetensors", "state.json", "trained.safetensors"]
    rows = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "acc" in r] == [1, 2, 3]  # end of the projector phase, then each stop


def test_log_table_lists_every_measurement(tmp_path):
    from tpx.organism import deep_card

    acc = {"exist": 0.5, "blind": 1.0}
    rows = [{"event": "start", "step": 0},
            {"step": 10, "phase": "projector", "train_min": 1.5, "s_per_step": 9.0, "lm": 2.0, "acc": acc,
             "mean_acc": 0.75},
            {"step": 20, "phase": "lora", "train_min": 3.0, "s_per_step": 9.0, "lm": 1.0,
             "acc": {"exist": 0.9, "blind": 1.0}, "mean_acc": 0.95}]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    table = deep_card.log_table(tmp_path / "log.jsonl").splitlines()
    assert table[0].startswith("| step | phase |") and "| exist | blind | mean |" in table[0]
    assert table[2] == "| 10 | projector | 1.5 | 9.0 | 2.0 | 0.5 | 1.0 | 0.75 |"
    assert table[3].startswith("| 20 | lora |") and len(table) == 4
    (tmp_path / "prior_val.json").write_text(json.dumps({"exist": 0.5, "blind": 1.0}))
    table = deep_card.log_table(tmp_path / "log.jsonl", every=2).splitlines()
    assert [r.split(" |")[0] for r in table[2:]] == ["| 10", "| 20", "| prior (question only)"]
    assert table[-1].startswith("| prior (question only) | | | | | 0.5 | 1.0 |")


def test_report_prints_the_deep_runs_table(tmp_path, capsys):
    from tpx.organism.cli import main

    row = {"stage": "deep", "step": 5, "phase": "lora", "train_min": 1.0, "s_per_step": 9.0, "lm": 1.0,
           "acc": {"read": 0.1}, "mean_acc": 0.1}
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "log.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["report", "--run", "r", "--root", str(tmp_path)]) == 0
    assert "| 5 | lora | 1.0 | 9.0 | 1.0 | 0.1 | 0.1 |" in capsys.readouterr().out


def test_shipped_deep_organism_loads_and_answers_as_exported(shipped):
    """`tpx.load("organism-deep")` assembles the shipped parts into plain Gemma weights that answer as at export."""
    from tpx.organism import deep_card

    folder = deep_card.FOLDER
    assert sum(deep_card.sizes(folder).values()) <= deep_card.MAX_BYTES
    assert "Gemma Terms of Use" in (folder / "README.md").read_text()
    assert (folder / "GEMMA_TERMS.html").stat().st_size > 10_000 and (folder / "NOTICE.md").exists()
    model, processor = shipped
    assert not any(isinstance(m, deep.LoRALinear) for m in model.modules()) and not model.training
    assert processor.tokenizer.padding_side == "left"
    test = json.loads((folder / "training.json").read_text())["test"]
    samples = suite.build("test", test["slice"]["n_per_task"])
    assert D.greedy_answers(model, processor, samples) == test["slice"]["answers"]
    assert set(test["acc"]) == set(deep_card.TARGETS) == set(test["prior"])


def test_pruning_the_deep_organism_is_exact(shipped):
    """FastV at K = 2 of 18 layers, r = 1/4, on a padded batch: retention 1.0 is bit-exact, and the pruned run equals
    the unpruned organism with the dropped positions masked (prefill and every decode step). The tolerance is that
    of a trained model's float32 noise: SDPA and eager differ by 3.7e-5 at logits up to 32 on these prompts."""
    from reference import check_mask_reference, check_retention_one

    from tpx.ask import prompt

    model, processor = shipped
    samples = [suite.make_sample(task, "test", i) for i, task in enumerate(["count", "read"])]
    inputs = dict(processor(images=[s.image for s in samples], text=[prompt(processor, s.question) for s in samples],
                            return_tensors="pt", padding=True))
    assert bool((inputs["attention_mask"] == 0).any())
    with torch.no_grad():
        check_retention_one(model, inputs, "fastv", "L", 2)
        run = check_mask_reference(model, inputs, "fastv", "L", 0.25, 2, atol=1e-4)
    assert (run.adapter.n_layers, run.trace[0].layer, run.trace[0].n_visual, run.trace[0].n_keep) == (18, 2, 144, 36)
    assert type(run.adapter.decoder).__name__ == "Gemma3Decoder"


def test_task_weights_shift_the_training_draw_and_are_checked():
    weights = D.parse_task_weights("read=3, locate=0")
    assert weights["read"] == 3.0 and weights["locate"] == 0.0 and weights["exist"] == 1.0
    for bad, word in (("reed=2", "unknown task"), ("read=x", "task=weight"), ("read=-1", ">= 0")):
        with pytest.raises(ValueError, match=word):
            D.parse_task_weights(bad)

    def kinds(spec: str, distinct: bool) -> list[list[str]]:
        rng = np.random.default_rng(7)
        rows = [B.draw_packed(rng, 6, D.parse_task_weights(spec), distinct=distinct) for _ in range(300)]
        for _, turns, _ in rows:
            if distinct:
                assert len(set(turns)) == len(turns)  # no question twice about one image
        return [k for _, _, k in rows]

    plain, heavy = kinds("", True), kinds("read=3,locate=0", True)
    count = lambda rows, t: sum(k.count(t) for k in rows)  # noqa: E731
    assert count(heavy, "locate") == 0 and count(plain, "locate") > 0
    # read is asked at most once per image when distinct, and more images get it when it weighs 3
    assert all(k.count("read") <= 1 for k in heavy)
    assert count(heavy, "read") > 1.3 * count(plain, "read")
    assert any(k.count("read") > 1 for k in kinds("read=3", False))  # without `distinct` a row repeats it


def test_diagnose_probes_the_glyph_and_the_answers_attention(built):
    from tpx.organism import diagnose

    model, processor = built
    # the shipped organism's tower carries the digit at the glyph's patches (it was trained to read)
    assert diagnose.glyph_probe(model, "tower", n_train=80, n_test=40) >= 0.9
    with pytest.raises(ValueError, match="stage must be"):
        diagnose.glyph_probe(model, "lm")
    table = diagnose.answer_attention(model, processor, n=3)
    assert table["layer"].tolist() == list(range(model.config.text_config.num_hidden_layers))
    assert table["visual"].between(0, 1).all() and table["glyph_share"].between(0, 1).all()
    expected = float(np.mean([diagnose._glyph_patches(suite.make_sample("read", "val", i)).float().mean()
                              for i in range(3)]))
    assert table["area_share"].iloc[0] == pytest.approx(expected) and 0 < expected < 0.2
    assert model.config._attn_implementation != "eager"  # restored
