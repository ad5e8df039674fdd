"""Turn scenes and questions into model inputs: packed multi-question training rows and eval prompts.

Token ids are built directly from the tokenizer's vocabulary (the word-level tokenizer makes this
exact); `tests/test_organism_model.py` checks they equal what the `LlavaProcessor` produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tpx.organism import draw, suite, tasks
from tpx.organism.draw import Scene

N_VISUAL = draw.GRID * draw.GRID
PANEL_P = 0.15  # share of packed training rows drawn as panel scenes (the anchor task)


def pixels(images: list[np.ndarray]) -> torch.Tensor:
    """(B, 3, H, W) float32 in [-1, 1], exactly as the organism's `CLIPImageProcessorPil` gives."""
    arr = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def patch_labels(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Per-patch dense targets, each (B, N) int64 in raster order."""
    return {k: torch.from_numpy(np.stack([s.labels[k].reshape(-1) for s in scenes])) for k in draw.N_CLASSES}


def _words(vocab: dict[str, int], text: str) -> list[int]:
    return [vocab[w] for w in text.replace(":", " : ").split()]


def prompt_ids(vocab: dict[str, int], question: str) -> list[int]:
    """`<s> USER : <image>*N {question} ASSISTANT :` as ids (the model's single-turn prompt)."""
    return [vocab["<s>"]] + _words(vocab, "USER:") + [vocab["<image>"]] * N_VISUAL + _words(
        vocab, f"{question} ASSISTANT:")


def packed_ids(vocab: dict[str, int], turns: list[tuple[str, str]], eos_weight: float):
    """Ids and per-token loss weights of a multi-turn row; weights sit on the tokens to predict."""
    ids = prompt_ids(vocab, turns[0][0])
    weights = [0.0] * len(ids)
    for k, (q, a) in enumerate(turns):
        if k:
            turn = _words(vocab, f"USER: {q} ASSISTANT:")
            ids += turn
            weights += [0.0] * len(turn)
        ans = _words(vocab, a) + [vocab["</s>"]]
        ids += ans
        weights += [1.0] * (len(ans) - 1) + [eos_weight]
    return ids, weights


@dataclass
class Batch:
    """Right-padded training batch; `targets[b, t]` is the token to predict at position t (-100: none)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    labels: dict[str, torch.Tensor]
    tasks: list[list[str]]


def draw_packed(rng: np.random.Generator, n_questions: int, task_p: dict[str, float]):
    """One training image with `n_questions` questions; tasks drawn with probabilities `task_p`."""
    panel = rng.random() < PANEL_P and task_p.get("anchor", 0) > 0
    scene = draw.make_panel_scene(rng) if panel else draw.make_scene(rng)
    names = ["anchor", "blind"] if panel else [t for t in tasks.FREE_TASKS if task_p.get(t, 0) > 0]
    p = np.array([task_p.get(t, 0.0) for t in names])
    if panel:
        p = np.array([0.85, 0.15 if task_p.get("blind", 0) > 0 else 0.0])
    p = p / p.sum()
    turns, kinds = [], []
    for _ in range(4 * n_questions):
        if len(turns) == n_questions:
            break
        t = names[int(rng.choice(len(names), p=p))]
        out = tasks.TASKS[t](scene, rng)
        if out is not None:
            turns.append(out[:2])
            kinds.append(t)
    return scene, turns, kinds


def collate(vocab: dict[str, int], rows: list[tuple[Scene, list, list]], eos_weight: float = 0.1) -> Batch:
    encoded = [packed_ids(vocab, turns, eos_weight) for _, turns, _ in rows]
    length = max(len(ids) for ids, _ in encoded)
    B = len(rows)
    input_ids = torch.full((B, length), vocab["<pad>"], dtype=torch.long)
    mask = torch.zeros((B, length), dtype=torch.long)
    targets = torch.full((B, length), -100, dtype=torch.long)
    weights = torch.zeros((B, length))
    for b, (ids, w) in enumerate(encoded):
        n = len(ids)
        input_ids[b, :n] = torch.tensor(ids)
        mask[b, :n] = 1
        targets[b, : n - 1] = torch.tensor(ids[1:])
        weights[b, : n - 1] = torch.tensor(w[1:])
    targets[weights == 0] = -100
    scenes = [r[0] for r in rows]
    return Batch(input_ids, mask, pixels([s.image for s in scenes]), targets, weights,
                 patch_labels(scenes), [r[2] for r in rows])


def train_batch(vocab, seed: int, step: int, batch_size: int, n_questions: int,
                task_p: dict[str, float], eos_weight: float = 0.1) -> Batch:
    """The training batch of `step`: a pure function of (seed, step), so resumption needs no data state."""
    rng = np.random.default_rng([suite.SPLITS["train"], suite.PACKED_STREAM, seed, step])
    return collate(vocab, [draw_packed(rng, n_questions, task_p) for _ in range(batch_size)], eos_weight)


def vision_batch(seed: int, step: int, batch_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images and per-patch labels for the vision stage (free and panel scenes), a pure function of (seed, step)."""
    rng = np.random.default_rng([suite.SPLITS["train"], suite.PACKED_STREAM + 1, seed, step])
    scenes = [draw.make_panel_scene(rng) if rng.random() < PANEL_P else draw.make_scene(rng)
              for _ in range(batch_size)]
    return pixels([s.image for s in scenes]), patch_labels(scenes)


def eval_scenes(split: str, n: int) -> list[Scene]:
    """`n` fixed held-out scenes (free and panel) for measuring what the vision tokens carry."""
    rng = np.random.default_rng([suite.SPLITS[split], suite.PACKED_STREAM + 2, n])
    return [draw.make_panel_scene(rng) if i % 5 == 4 else draw.make_scene(rng) for i in range(n)]
