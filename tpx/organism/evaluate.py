"""Held-out measurements during training: what the vision tokens carry, and per-task QA accuracy."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from tpx.organism import batch as B, font, heads, model as M, suite
from tpx.organism.suite import Sample


@torch.no_grad()
def vision_report(vision_tower, aux: heads.AuxHeads, scenes, batch_size: int = 64) -> dict:
    """Foreground / background accuracy per head and per-class foreground accuracy of the gated heads."""
    preds: dict[str, list] = defaultdict(list)
    labels: dict[str, list] = defaultdict(list)
    for i in range(0, len(scenes), batch_size):
        chunk = scenes[i:i + batch_size]
        lg = aux(heads.features(vision_tower, B.pixels([s.image for s in chunk])))
        lab = B.patch_labels(chunk)
        for k in lab:
            preds[k].append(lg[k].argmax(-1).flatten())
            labels[k].append(lab[k].flatten())
    out: dict = {}
    for k in labels:
        p, y = torch.cat(preds[k]), torch.cat(labels[k])
        fg = y != 0
        out[f"{k}_fg"] = round(float((p[fg] == y[fg]).float().mean()), 4)
        out[f"{k}_bg"] = round(float((p[~fg] == y[~fg]).float().mean()), 4)
        if k in heads.GATED:
            out[f"{k}_per_class"] = {int(c): round(float((p[y == c] == c).float().mean()), 3)
                                     for c in torch.unique(y[fg]).tolist()}
    p, y = torch.cat(preds["char"]), torch.cat(labels["char"])
    digit = (y >= 1) & (y <= len(font.DIGITS))  # panel letters sit at fixed places: keep them out of the gate
    out["digit_fg"] = round(float((p[digit] == y[digit]).float().mean()), 4) if digit.any() else 0.0
    out["gate"] = min(out["colour_fg"], out["shape_fg"], out["digit_fg"])
    return out


def _rows(vocab, prompts: list[list[int]], positions: list[list[int]]):
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), vocab["<pad>"], dtype=torch.long)
    mask = torch.zeros_like(ids)
    pos = torch.zeros_like(ids)
    for b, (p, q) in enumerate(zip(prompts, positions)):
        ids[b, :len(p)] = torch.tensor(p)
        mask[b, :len(p)] = 1
        pos[b, :len(p)] = torch.tensor(q)
    last = torch.tensor([len(p) - 1 for p in prompts])
    return ids, mask, pos, last


@torch.no_grad()
def greedy_answers(model, vocab: dict[str, int], samples: list[Sample], batch_size: int = 64,
                   pool: int = 1) -> list[str]:
    """Greedy answer per sample from the single-turn prompt: 1 token, 2 for `locate` (argmax, no sampling).

    `pool` > 1 answers with the projected image tokens average-pooled `pool`×`pool` (`model.pooled`).
    """
    inv = {i: w for w, i in vocab.items()}
    out = []
    with M.pooled(model, pool):
        for i in range(0, len(samples), batch_size):
            chunk = samples[i:i + batch_size]
            prompts = [B.prompt_ids(vocab, s.question, pool) for s in chunk]
            positions = [B.prompt_positions(vocab, s.question, pool) for s in chunk]
            px = B.pixels([np.asarray(s.image) for s in chunk])
            first = _step(model, vocab, prompts, positions, px)
            words = [[inv[t]] for t in first]
            two = [j for j, s in enumerate(chunk) if s.task == "locate"]
            if two:
                second = _step(model, vocab, [prompts[j] + [first[j]] for j in two],
                               [positions[j] + [positions[j][-1] + 1] for j in two], px[two])
                for j, t in zip(two, second):
                    words[j].append(inv[t])
            out += [" ".join(w) for w in words]
    return out


def _step(model, vocab, prompts, positions, px) -> list[int]:
    ids, mask, pos, last = _rows(vocab, prompts, positions)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=px).logits
    return logits[torch.arange(len(prompts)), last].argmax(-1).tolist()


def task_accuracy(model, vocab, samples: list[Sample], pool: int = 1) -> dict[str, float]:
    """Per-task held-out accuracy (locate: cell hit) of greedy answers (`pool`: see `greedy_answers`)."""
    was_training = model.training
    model.eval()
    answers = greedy_answers(model, vocab, samples, pool=pool)
    model.train(was_training)
    hits: dict[str, list[bool]] = defaultdict(list)
    for s, a in zip(samples, answers):
        hits[s.task].append(suite.score(s, a))
    return {t: round(float(np.mean(v)), 4) for t, v in hits.items()}


def measurements(path) -> list[dict]:
    """The measurement rows of a run's `log.jsonl` (step, train_min, accuracies), without its event rows."""
    import json

    return [r for r in (json.loads(line) for line in open(path) if line.strip()) if "event" not in r]


def log_table(path, every: int = 1) -> str:
    """Markdown table of a run's `log.jsonl`: per-task held-out accuracy (lm) or vision gate numbers."""
    rows = measurements(path)
    rows = rows[::every] + ([rows[-1]] if rows and (len(rows) - 1) % every else [])
    if not rows:
        return ""
    if rows[-1]["stage"] == "vision":
        cols = ["colour_fg", "shape_fg", "digit_fg", "char_fg", "centre_fg", "gate"]
        head = "| step | train min | aux | " + " | ".join(cols) + " |"
        body = [f"| {r['step']} | {r['train_min']} | {r.get('aux')} | "
                + " | ".join(str(r["vision"].get(c, "")) for c in cols) + " |" for r in rows]
    else:
        names = list(rows[-1]["acc"])
        head = "| step | train min | lm loss | " + " | ".join(names) + " |"
        body = [f"| {r['step']} | {r['train_min']} | {r.get('lm')} | "
                + " | ".join(str(r["acc"][t]) for t in names) + " |" for r in rows]
        body.append("| prior | | | " + " | ".join(str(rows[-1]["prior"].get(t, "")) for t in names) + " |")
    return "\n".join([head, "|" + "---|" * (head.count("|") - 1)] + body)
