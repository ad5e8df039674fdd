"""Export a trained checkpoint to `data/organism/<name>/` with a model card of held-out test accuracy."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import torch

from tpx.organism import checkpoint, evaluate, model as M, suite, tasks

TARGETS = {"exist": 0.9, "attribute": 0.9, "relation": 0.9, "read": 0.9, "locate": 0.9, "anchor": 0.9,
           "count": 0.8, "blind": 1.0}


def test_report(model, n_per_task: int = 200, prior_draws: int = 20000) -> dict:
    """Per-task test accuracy of greedy answers beside the question-only prior."""
    samples = suite.build("test", n_per_task)
    acc = evaluate.task_accuracy(model, M.build_tokenizer().get_vocab(), samples)
    majority = {t: suite.question_only_answers(t, prior_draws) for t in tasks.TASKS}
    prior = suite.prior_accuracy(samples, majority)
    return {"n_per_task": n_per_task, "acc": acc, "prior": {k: round(v, 4) for k, v in prior.items()}}


def export(run_dirs: list[str], out_dir: str, n_per_task: int = 200, prior_draws: int = 20000) -> dict:
    """Copy the last run's weights + processor to `out_dir`, evaluate on test, write README.md and logs."""
    out = Path(out_dir)
    last = checkpoint.ckpt_dir(Path(run_dirs[-1]))
    if last is None:
        raise FileNotFoundError(f"no checkpoint under {run_dirs[-1]}")
    model = checkpoint.load_model(last).eval()
    M.save(model, M.build_processor(), out)
    stages = []
    for r in run_dirs:
        r = Path(r)
        st = checkpoint.load_state(checkpoint.ckpt_dir(r))
        stages.append({"run": r.name, "steps": st["state"]["step"],
                       "train_min": round(st["state"]["elapsed_s"] / 60, 1), "config": st["config"]})
        shutil.copy(r / "log.jsonl", out / f"log_{r.name}.jsonl")
    report = test_report(model, n_per_task, prior_draws)
    (out / "training.json").write_text(json.dumps({"stages": stages, "test": report}, indent=1))
    (out / "README.md").write_text(_card(stages, report))
    return report


def _card(stages: list[dict], report: dict) -> str:
    names = list(tasks.TASKS)
    rows = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
            "| test accuracy | " + " | ".join(str(report["acc"][t]) for t in names) + " |",
            "| question-only prior | " + " | ".join(str(report["prior"][t]) for t in names) + " |",
            "| target | " + " | ".join(str(TARGETS[t]) for t in names) + " |"]
    met = all(report["acc"][t] >= TARGETS[t] for t in names)
    lines = [
        "# tpx model organism", "",
        "A tiny LLaVA (`LlavaForConditionalGeneration`: CLIP vision tower, 2-layer projector, Llama with RoPE) "
        "trained from scratch on tpx's synthetic visual-QA suite (`tpx.organism`). 96x96 images, patch 8: "
        "144 visual tokens in a 12x12 grid. Prompt: `USER: <image>\\n{question} ASSISTANT:`.", "",
        f"## Held-out test accuracy ({report['n_per_task']} samples per task, greedy)", "", *rows, "",
        f"Targets met: **{'yes' if met else 'no'}**.", "",
        "## Training stages", "",
        "| run | stage | steps | train min | seed | batch | lr |", "|---|---|---|---|---|---|---|",
        *[f"| {s['run']} | {s['config']['stage']} | {s['steps']} | {s['train_min']} | {s['config']['seed']} | "
          f"{s['config']['batch_size']} | {s['config']['lr']} |" for s in stages], "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}. "
        "Full configs in `training.json`, logs in `log_*.jsonl`. Attention maps were never supervised.", "",
    ]
    return "\n".join(lines)
