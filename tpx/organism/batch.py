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


def pooled_index(pool: int) -> list[int]:
    """Raster indices of the visual tokens left by `pool`×`pool` average pooling: each window's first token.

    The same places `tpx.select.pool2d` gives merged tokens, so a model trained on pooled tokens sees the
    positions that `tpx.pruning(model, "pooling", retention=1/pool², hook="E")` gives it at inference.
    """
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1 or draw.GRID % pool:
        raise ValueError(f"pool must be a positive int dividing the {draw.GRID}x{draw.GRID} grid, got {pool!r}")
    side = draw.GRID // pool
    return [r * pool * draw.GRID + c * pool for r in range(side) for c in range(side)]


def _prefix(vocab: dict[str, int], pool: int) -> tuple[list[int], list[int], int]:
    """Ids and position ids of `<s> USER : <image>*n` with n = N / pool², and the position of what follows."""
    text = [vocab["<s>"]] + _words(vocab, "USER:")
    visual = pooled_index(pool)
    ids = text + [vocab["<image>"]] * len(visual)
    return ids, list(range(len(text))) + [len(text) + i for i in visual], len(text) + N_VISUAL


def prompt_ids(vocab: dict[str, int], question: str, pool: int = 1) -> list[int]:
    """`<s> USER : <image>*N {question} ASSISTANT :` as ids (the model's single-turn prompt).

    With `pool` > 1 the prompt holds N / pool² image tokens; their position ids come from `prompt_positions`.
    """
    return _prefix(vocab, pool)[0] + _words(vocab, f"{question} ASSISTANT:")


def prompt_positions(vocab: dict[str, int], question: str, pool: int = 1) -> list[int]:
    """Position ids of `prompt_ids`: 0, 1, ... unpooled; original positions of the kept tokens when pooled."""
    _, positions, start = _prefix(vocab, pool)
    n_text = len(_words(vocab, f"{question} ASSISTANT:"))
    return positions + list(range(start, start + n_text))


def packed_ids(vocab: dict[str, int], turns: list[tuple[str, str]], eos_weight: float, pool: int = 1):
    """One image prefix followed by isolated question turns.

    Layout: `<s> USER : <image>*N` then, per turn, `{question} ASSISTANT : {answer} </s>`. Each turn sees
    only the prefix and itself (see `turn_mask`) and its positions restart right after the prefix, so every
    turn is exactly the single-turn prompt the model is evaluated on, and no turn can copy an answer from
    another. Returns ids, per-token loss weights (on the tokens to predict), position ids and turn ids
    (0 for the prefix). With `pool` > 1 the prefix holds the N / pool² pooled image tokens at their
    original positions (see `pooled_index`) and the turns keep the positions they have unpooled.
    """
    ids, positions, start = _prefix(vocab, pool)
    n_prefix = len(ids)
    weights, turn = [0.0] * n_prefix, [0] * n_prefix
    for k, (q, a) in enumerate(turns, start=1):
        question, answer = _words(vocab, f"{q} ASSISTANT:"), _words(vocab, a) + [vocab["</s>"]]
        ids += question + answer
        weights += [0.0] * len(question) + [1.0] * (len(answer) - 1) + [eos_weight]
        positions += list(range(start, start + len(question) + len(answer)))
        turn += [k] * (len(question) + len(answer))
    return ids, weights, positions, turn


def turn_mask(turn: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean attention mask: causal, within the own turn or the shared prefix, no padding keys.

    Args:
        turn: (B, T) int64 turn ids, 0 for the prefix.
        valid: (B, T) bool, False on padding.
    """
    T = turn.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    same = (turn[:, :, None] == turn[:, None, :]) | (turn[:, None, :] == 0)
    return (causal & same & valid[:, None, :])[:, None]


@dataclass
class Batch:
    """Right-padded training batch; `targets[b, t]` is the token to predict at position t (-100: none)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor  # (B, 1, T, T) bool, from `turn_mask`
    position_ids: torch.Tensor
    pixel_values: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    labels: dict[str, torch.Tensor]
    tasks: list[list[str]]


def draw_packed(rng: np.random.Generator, n_questions: int, task_p: dict[str, float], max_objects: int = 5,
                distinct: bool = False):
    """One training image with `n_questions` questions; tasks drawn with probabilities `task_p`.

    `distinct`: a question already asked about this image is not asked again (a repeated turn adds no new
    evidence, and `read` has one question per image), so the row may hold fewer than `n_questions` turns.
    """
    panel = rng.random() < PANEL_P and task_p.get("anchor", 0) > 0
    scene = draw.make_panel_scene(rng) if panel else draw.make_scene(rng, max_objects=max_objects)
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
        if out is not None and not (distinct and out[:2] in turns):
            turns.append(out[:2])
            kinds.append(t)
    return scene, turns, kinds


def collate(vocab: dict[str, int], rows: list[tuple[Scene, list, list]], eos_weight: float = 0.1,
            pool: int = 1) -> Batch:
    encoded = [packed_ids(vocab, turns, eos_weight, pool) for _, turns, _ in rows]
    length = max(len(e[0]) for e in encoded)
    B = len(rows)
    input_ids = torch.full((B, length), vocab["<pad>"], dtype=torch.long)
    positions = torch.zeros((B, length), dtype=torch.long)
    turn = torch.full((B, length), -1, dtype=torch.long)
    targets = torch.full((B, length), -100, dtype=torch.long)
    weights = torch.zeros((B, length))
    for b, (ids, w, pos, seg) in enumerate(encoded):
        n = len(ids)
        input_ids[b, :n] = torch.tensor(ids)
        positions[b, :n] = torch.tensor(pos)
        turn[b, :n] = torch.tensor(seg)
        targets[b, : n - 1] = torch.tensor(ids[1:])
        weights[b, : n - 1] = torch.tensor(w[1:])
    targets[weights == 0] = -100
    scenes = [r[0] for r in rows]
    return Batch(input_ids, turn_mask(turn, turn >= 0), positions, pixels([s.image for s in scenes]), targets,
                 weights, patch_labels(scenes), [r[2] for r in rows])


def train_batch(vocab, seed: int, step: int, batch_size: int, n_questions: int,
                task_p: dict[str, float], eos_weight: float = 0.1, max_objects: int = 5, pool: int = 1) -> Batch:
    """The training batch of `step`: a pure function of (seed, step), so resumption needs no data state.

    `max_objects` < 5 is a curriculum: fewer distractors make routing to the evidence easier to find.
    `pool` > 1 lays the rows out for a model whose projected image tokens are average-pooled (see `pooled`).
    """
    rng = np.random.default_rng([suite.SPLITS["train"], suite.PACKED_STREAM, seed, step])
    rows = [draw_packed(rng, n_questions, task_p, max_objects) for _ in range(batch_size)]
    return collate(vocab, rows, eos_weight, pool)


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
