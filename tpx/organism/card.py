"""Export a trained checkpoint to `data/organism/<name>/` with a model card of held-out test accuracy."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import torch

from tpx.organism import checkpoint, draw, evaluate, model as M, suite, tasks

TARGETS = {"exist": 0.9, "attribute": 0.9, "relation": 0.9, "read": 0.9, "locate": 0.9, "anchor": 0.9,
           "count": 0.8, "blind": 1.0}
SLICE = 25  # test samples per task that the card also scores through tpx.load + tpx.evaluate


def test_report(model, n_per_task: int = 200, prior_draws: int = 20000, pool: int = 1) -> dict:
    """Per-task test accuracy of greedy answers beside the question-only prior (`pool`: pooled tokens)."""
    samples = suite.build("test", n_per_task)
    acc = evaluate.task_accuracy(model, M.build_tokenizer().get_vocab(), samples, pool=pool)
    majority = {t: suite.question_only_answers(t, prior_draws) for t in tasks.TASKS}
    prior = suite.prior_accuracy(samples, majority)
    return {"n_per_task": n_per_task, "acc": acc, "prior": {k: round(v, 4) for k, v in prior.items()}}


def slice_accuracy(path: str | Path, pool: int = 1, n_per_task: int = SLICE) -> dict[str, float]:
    """Per-task accuracy of the exported folder loaded as a user would (`tpx.load`, `tpx.evaluate`).

    The first `n_per_task` test samples per task; a pooled checkpoint pools as it was trained to, because
    `tpx.load` applies its `config.tpx_compression`.
    """
    import tpx
    from tpx.data import load_samples
    from tpx.evaluate import evaluate as run

    model, processor = tpx.load(str(path))
    samples = load_samples("organism", split="test", n=n_per_task)
    df = run(model, processor, samples, methods=[None], batch_size=50, max_new_tokens=3, progress=False)
    return {t: round(float(g["score"].mean()), 4) for t, g in df.groupby("task", sort=False)}


def export(run_dirs: list[str], out_dir: str, n_per_task: int = 200, prior_draws: int = 20000,
           pool: int = 1, note: str = "") -> dict:
    """Copy the last run's weights + processor to `out_dir`, evaluate on test, write README.md and logs.

    `pool` > 1 marks a checkpoint trained on `pool`×`pool` average-pooled visual tokens: it is scored that way.
    `note` is added to the card's training section (e.g. where a fine-tune branched off).
    """
    out = Path(out_dir)
    last = checkpoint.ckpt_dir(Path(run_dirs[-1]))
    if last is None:
        raise FileNotFoundError(f"no checkpoint under {run_dirs[-1]}")
    model = checkpoint.load_model(last).eval()
    if pool > 1:  # tpx.load re-applies it: the checkpoint only works with the compression it was trained with
        model.config.tpx_compression = {"method": "pooling", "retention": 1 / pool**2, "hook": "E"}
    M.save(model, M.build_processor(), out)
    runs = [Path(r) for r in run_dirs]
    stages = _stages(runs)
    for r in runs:
        shutil.copy(r / "log.jsonl", out / f"log_{r.name}.jsonl")
    report = test_report(model, n_per_task, prior_draws, pool)
    report["pool"] = pool
    report["tpx_slice"] = {"n_per_task": SLICE, "acc": slice_accuracy(out, pool)}
    (out / "training.json").write_text(json.dumps({"stages": stages, "test": report, "note": note}, indent=1))
    (out / "README.md").write_text(_card(stages, report, note, json.loads((out / "config.json").read_text())))
    return report


def _stages(runs: list[Path]) -> list[dict]:
    """Steps and train minutes of each stage as the exported model saw it.

    A run that the next one branched off counts up to the branch point (`init_from_step`), not to wherever it
    was trained on afterwards; its minutes come from its log row at that step.
    """
    states = [checkpoint.load_state(checkpoint.ckpt_dir(r)) for r in runs]
    stages = []
    for i, (r, st) in enumerate(zip(runs, states)):
        steps, minutes = st["state"]["step"], st["state"]["elapsed_s"] / 60
        branch = states[i + 1]["state"].get("init_from_step") if i + 1 < len(states) else None
        if branch is not None and branch != steps:
            at = [row for row in evaluate.measurements(r / "log.jsonl") if row["step"] == branch]
            if not at:
                raise ValueError(f"{r.name}: no log row at step {branch}, where {runs[i + 1].name} branched off")
            steps, minutes = branch, at[-1]["train_min"]
        stages.append({"run": r.name, "steps": steps, "train_min": round(minutes, 1), "config": st["config"]})
    return stages


def architecture(config: dict) -> str:
    """One line describing a LLaVA-style checkpoint's towers, read from its `config.json` (never typed by hand)."""
    v, t = config["vision_config"], config["text_config"]
    grid = v["image_size"] // v["patch_size"]
    kv = t.get("num_key_value_heads") or t["num_attention_heads"]
    theta = (t.get("rope_parameters") or {}).get("rope_theta", t.get("rope_theta", "?"))
    return (f"vision tower {v.get('model_type', 'vision')}: {v['num_hidden_layers']} layers, hidden {v['hidden_size']}, "
            f"{v['num_attention_heads']} heads, {v['image_size']}-pixel images in {v['patch_size']}-pixel patches "
            f"({grid}×{grid} = {grid * grid} visual tokens); language model {t.get('model_type', 'text')}: "
            f"{t['num_hidden_layers']} decoder layers, hidden {t['hidden_size']}, {t['num_attention_heads']} query / "
            f"{kv} key-value heads, MLP {t['intermediate_size']}, vocabulary {t['vocab_size']:,}, RoPE θ {theta}")


def refresh(folder: str | Path) -> bool:
    """Rewrite a checkpoint's card from its `training.json` and `config.json` (no re-evaluation), keeping the
    machine line it was exported on; True if the card changed."""
    folder = Path(folder)
    t = json.loads((folder / "training.json").read_text())
    card = folder / "README.md"
    old = card.read_text() if card.exists() else ""
    machine = next((ln for ln in old.splitlines() if ln.startswith("Machine:")), None)
    new = _card(t["stages"], t["test"], t.get("note", ""), json.loads((folder / "config.json").read_text()), machine)
    card.write_text(new)
    return new != old


def _card(stages: list[dict], report: dict, note: str = "", config: dict | None = None,
          machine: str | None = None) -> str:
    names = list(tasks.TASKS)
    rows = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
            "| test accuracy | " + " | ".join(str(report["acc"][t]) for t in names) + " |",
            "| question-only prior | " + " | ".join(str(report["prior"][t]) for t in names) + " |",
            "| target | " + " | ".join(str(TARGETS[t]) for t in names) + " |",
            f"| tpx.load + tpx.evaluate, first {report['tpx_slice']['n_per_task']} | "
            + " | ".join(str(report["tpx_slice"]["acc"][t]) for t in names) + " |"]
    met = all(report["acc"][t] >= TARGETS[t] for t in names)
    pool = report.get("pool", 1)
    n_visual = (draw.GRID // pool) ** 2
    pooled = ("" if pool == 1 else
              f"**Training-aware checkpoint**: fine-tuned from the full-token organism with tpx's `pooling` "
              f"({pool}x{pool} average pooling of the projected visual tokens, hook E) always on, so the LLM "
              f"sees {n_visual} visual tokens, each at the position of its window's first token. All numbers "
              "below are measured that way. `config.json` records it as `tpx_compression`: run the model inside "
              "`tpx.pruning(model)` (that compression alone) or `tpx.pruning(model, method, ...)` (the method "
              "acts on what it leaves); `tpx.evaluate` does so, and a bare `model.generate` would see all "
              f"{draw.GRID ** 2} tokens, which it was not trained on. "
              "Study Q5b (Wen et al., 2025): compare Qwen2-VL's 2x2 merger and DART trained with pruning.")
    lines = [
        "# tpx model organism", "",
        "A tiny LLaVA (`LlavaForConditionalGeneration`: CLIP vision tower, 2-layer projector, Llama with RoPE) "
        "trained from scratch on tpx's synthetic visual-QA suite (`tpx.organism`). 96x96 images, patch 8: "
        "144 visual tokens in a 12x12 grid. Prompt: `USER: <image>\\n{question} ASSISTANT:`.", "",
        *([f"Architecture (from `config.json`): {architecture(config)}.", ""] if config else []),
        *([pooled, ""] if pooled else []),
        f"## Held-out test accuracy ({report['n_per_task']} samples per task, greedy)", "", *rows, "",
        "The last row scores the first test samples per task after loading the folder as a user does "
        "(`tpx.load`, left-padded batches, `generate`); `tests/test_organism_checkpoints.py` checks it.", "",
        f"Targets met: **{'yes' if met else 'no'}**.", "",
        "## Training stages", "",
        "| run | stage | steps | train min | seed | batch | lr |", "|---|---|---|---|---|---|---|",
        *[f"| {s['run']} | {s['config']['stage']} | {s['steps']} | {s['train_min']} | {s['config']['seed']} | "
          f"{s['config']['batch_size']} | {s['config']['lr']} |" for s in stages], "",
        *([note, ""] if note else []),
        machine or (f"Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}. "
                    "Full configs in `training.json`, logs in `log_*.jsonl`. Attention maps were never supervised."), "",
    ]
    return "\n".join(lines)
