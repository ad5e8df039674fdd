"""Staged, resumable training of the deep organism (LLaVA on pretrained Gemma-3-270M, see `deep.py`).

One run, two phases chosen by the step count so that a resumed run continues the same recipe: up to
`proj_steps` the projector alone learns to feed the frozen LM (the LoRA factors exist but are frozen, B = 0);
from then on projector + LoRA (+ the tower at `vision_lr_mult` x lr when > 0). Rows are packed as in the
shallow organism (`batch.turn_mask`): one image prefix `<bos><image>*144` followed by isolated question
turns whose positions restart after the prefix, so each turn is exactly the single-turn prompt
`deep.CHAT_TEMPLATE` gives and the 144 image tokens are paid for once per row, not once per question. The
262k-row output layer is applied only at answer positions. Checkpoints hold only what trains (tower,
projector, LoRA factors) plus the optimizer as safetensors + JSON; the converted Gemma is rebuilt from the
cache. Held-out accuracy per task is greedy `generate` on the val split through the processor, as
`tpx.evaluate` runs the model.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tpx.organism import batch as B, checkpoint, deep, gemma, suite

log = logging.getLogger(__name__)
STREAM = suite.PACKED_STREAM + 3  # the deep organism's own training draw


@dataclass
class DeepConfig:
    """Everything that defines the run; saved in each checkpoint."""

    run: str = "deep0"
    root: str = "data/organism/checkpoints"
    seed: int = 0
    batch_size: int = 4
    n_questions: int = 12
    proj_steps: int = 150
    lr: float = 1e-3  # projector
    lora_lr: float = 5e-4
    warmup: int = 30
    decay_start: int | None = None
    decay_steps: int = 1000
    max_steps: int = 1_000_000
    minutes: float = 60.0
    eval_minutes: float = 15.0
    n_eval: int = 20
    lora_rank: int = 8
    lora_alpha: float = 16.0
    vision_lr_mult: float = 0.0
    eos_weight: float = 0.2
    max_objects: int = 5
    # relative task weights of the training draw, "read=3,locate=3" (unnamed tasks weigh 1), and whether a row
    # may repeat a question: from step 780 on deep0 weighs the tasks that had not started to learn (read,
    # locate, relation) up, because its answer-position attention barely reached the glyph patches
    task_weights: str = ""
    distinct: bool = False
    # bf16 autocast: on CPUs without bf16 instructions (AVX2) some backward matmuls fall to torch's portable GEMM
    # (cpublas_gemm_impl): minutes per step against ~20 s in float32 (deep0, step 546)
    bf16: bool = False
    threads: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> "DeepConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def lr_scale(cfg: DeepConfig, step: int) -> float:
    """Linear warmup (restarted when LoRA starts), constant, linear decay to 10% from `decay_start`."""
    since = step if step < cfg.proj_steps else step - cfg.proj_steps
    s = min(1.0, (since + 1) / max(1, cfg.warmup))
    if cfg.decay_start is not None and step >= cfg.decay_start:
        s *= 1.0 - 0.9 * min(1.0, (step - cfg.decay_start) / max(1, cfg.decay_steps))
    return s


class Encoder:
    """Gemma token ids of packed rows, identical to what the processor gives for single-turn prompts."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        self.image = tokenizer.convert_tokens_to_ids(deep.IMAGE_TOKEN)

    @lru_cache(maxsize=100_000)
    def text(self, s: str) -> tuple[int, ...]:
        return tuple(self.tok(s, add_special_tokens=False).input_ids)

    def question(self, q: str) -> tuple[int, ...]:
        return self.text(f"\n{q}\nAnswer:")

    def answer(self, a: str) -> tuple[int, ...]:
        return self.text(f" {a}") + (self.eos,)

    def packed(self, turns: list[tuple[str, str]], eos_weight: float):
        """ids, loss weights of the token each position predicts' target, position ids, turn ids (0 = prefix)."""
        ids = [self.bos] + [self.image] * B.N_VISUAL
        n = len(ids)
        weights, positions, turn = [0.0] * n, list(range(n)), [0] * n
        for k, (q, a) in enumerate(turns, start=1):
            qi, ai = self.question(q), self.answer(a)
            ids += qi + ai
            weights += [0.0] * len(qi) + [1.0] * (len(ai) - 1) + [eos_weight]
            positions += list(range(n, n + len(qi) + len(ai)))
            turn += [k] * (len(qi) + len(ai))
        return ids, weights, positions, turn


def parse_task_weights(spec: str) -> dict[str, float]:
    """Task probabilities of the training draw from "read=3,locate=3": every suite task weighs 1 unless named."""
    weights = {t: 1.0 for t in suite.TASK_IDS}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        if name not in weights:
            raise ValueError(f"task_weights: unknown task {name!r}; tasks are {list(weights)}")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"task_weights: {part!r} must be task=weight with a number >= 0") from None
        if not w >= 0:
            raise ValueError(f"task_weights: weight of {name!r} must be >= 0, got {w}")
        weights[name] = w
    return weights


def train_batch(enc: Encoder, cfg: DeepConfig, step: int) -> dict[str, torch.Tensor]:
    """The packed batch of `step`: a pure function of (seed, step), so resumption needs no data state."""
    rng = np.random.default_rng([suite.SPLITS["train"], STREAM, cfg.seed, step])
    task_p = parse_task_weights(cfg.task_weights)
    rows = [B.draw_packed(rng, cfg.n_questions, task_p, cfg.max_objects, cfg.distinct) for _ in range(cfg.batch_size)]
    encoded = [enc.packed(turns, cfg.eos_weight) for _, turns, _ in rows]
    length = max(len(e[0]) for e in encoded)
    n = len(rows)
    ids = torch.full((n, length), enc.pad, dtype=torch.long)
    pos = torch.zeros((n, length), dtype=torch.long)
    turn = torch.full((n, length), -1, dtype=torch.long)
    targets = torch.full((n, length), -100, dtype=torch.long)
    weights = torch.zeros((n, length))
    for b, (i, w, p, t) in enumerate(encoded):
        ids[b, :len(i)], pos[b, :len(i)], turn[b, :len(i)] = torch.tensor(i), torch.tensor(p), torch.tensor(t)
        targets[b, :len(i) - 1], weights[b, :len(i) - 1] = torch.tensor(i[1:]), torch.tensor(w[1:])
    targets[weights == 0] = -100
    return {"input_ids": ids, "attention_mask": B.turn_mask(turn, turn >= 0), "position_ids": pos,
            "pixel_values": B.pixels([s.image for s, _, _ in rows]), "targets": targets, "weights": weights}


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weighted cross-entropy on answer tokens; `lm_head` only at the positions that predict one."""
    out = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      position_ids=batch["position_ids"], pixel_values=batch["pixel_values"])
    where = batch["targets"] != -100
    logits = model.lm_head(out.last_hidden_state[where]).float()
    ce = F.cross_entropy(logits, batch["targets"][where], reduction="none")
    w = batch["weights"][where]
    return (ce * w).sum() / w.sum()


@torch.no_grad()
def greedy_answers(model, processor, samples: list, batch_size: int = 16, max_new_tokens: int = 8) -> list[str]:
    """Greedy answers through the processor's chat template, left-padded, as `tpx.evaluate` asks them."""
    tok = processor.tokenizer
    tok.padding_side = "left"
    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        texts = [processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]}],
            add_generation_prompt=True) for s in chunk]
        enc = processor(images=[s.image for s in chunk], text=texts, return_tensors="pt", padding=True)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        out += [t.strip() for t in tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
    return out


def task_accuracy(model, processor, samples: list) -> dict[str, float]:
    """Per-task accuracy of greedy answers (`suite.score`: exact match, `locate` a cell hit)."""
    was = model.training
    model.eval()
    answers = greedy_answers(model, processor, samples)
    model.train(was)
    hits: dict[str, list[bool]] = defaultdict(list)
    for s, a in zip(samples, answers):
        hits[s.task].append(suite.score(s, a))
    return {t: round(float(np.mean(v)), 4) for t, v in hits.items()}


def trained_state(model) -> dict[str, torch.Tensor]:
    """What the run trains and ships: tower, projector, LoRA factors (names prefixed by part)."""
    out = {f"vision_tower.{k}": v for k, v in model.model.vision_tower.state_dict().items()}
    out |= {f"projector.{k}": v for k, v in model.model.multi_modal_projector.state_dict().items()}
    out |= {f"lora.{k}": v for k, v in deep.lora_state(model).items()}
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def load_trained_state(model, state: dict[str, torch.Tensor]) -> None:
    parts = defaultdict(dict)
    for k, v in state.items():
        part, name = k.split(".", 1)
        parts[part][name] = v
    model.model.vision_tower.load_state_dict(parts["vision_tower"])
    model.model.multi_modal_projector.load_state_dict(parts["projector"])
    deep.load_lora(model, parts["lora"])


class DeepTrainer:
    """Model, optimizer and loop of the deep organism's run; `resume` continues its checkpoint."""

    def __init__(self, cfg: DeepConfig, resume: bool = False, gemma_dir: Path | None = None):
        torch.set_num_threads(cfg.threads)
        self.cfg, self.run_dir = cfg, Path(cfg.root) / cfg.run
        self.gemma_dir = gemma.converted() if gemma_dir is None else gemma_dir
        self.processor = deep.build_processor(self.gemma_dir)
        self.enc = Encoder(self.processor.tokenizer)
        vision_cfg, tower = deep.shallow_vision()
        self.model = deep.build_model(self.gemma_dir, vision_cfg, self.enc.image, seed=cfg.seed)
        self.model.model.vision_tower.load_state_dict(tower)
        deep.add_lora(self.model, cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed)
        self.state = {"step": 0, "elapsed_s": 0.0}
        ck = checkpoint.ckpt_dir(self.run_dir) if resume else None
        if resume and ck is None:
            raise FileNotFoundError(f"resume: no checkpoint under {self.run_dir}")
        if ck:
            load_trained_state(self.model, load_file(ck / "trained.safetensors"))
            self.state.update(checkpoint.load_state(ck)["state"])
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.groups = {"projector": list(self.model.model.multi_modal_projector.parameters()),
                       "lora": [p for n, p in self.model.named_parameters() if ".lora_" in n],
                       "vision": list(self.model.model.vision_tower.parameters())}
        self.opt = torch.optim.AdamW(
            [{"params": self.groups["projector"], "base_lr": cfg.lr},
             {"params": self.groups["lora"], "base_lr": cfg.lora_lr},
             {"params": self.groups["vision"], "base_lr": cfg.lr * cfg.vision_lr_mult}],
            lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
        if ck:
            checkpoint.load_optimizer(ck, self.opt)
        self.eval_samples = suite.build("val", cfg.n_eval)

    def _phase(self) -> None:
        step, cfg = self.state["step"], self.cfg
        trains = {"projector": True, "lora": step >= cfg.proj_steps,
                  "vision": step >= cfg.proj_steps and cfg.vision_lr_mult > 0}
        for name, params in self.groups.items():
            for p in params:
                p.requires_grad_(trains[name])
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * lr_scale(cfg, step)

    def step(self) -> dict:
        self._phase()
        batch = train_batch(self.enc, self.cfg, self.state["step"])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.bf16):
            loss = answer_loss(self.model, batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.groups.values() for p in g if p.requires_grad], 1.0)
        self.opt.step()
        self.state["step"] += 1
        return {"loss": loss.item(), "answers": int((batch["targets"] != -100).sum())}

    def save(self) -> Path:
        tmp, final = self.run_dir / "ckpt.tmp", self.run_dir / "ckpt"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(trained_state(self.model), tmp / "trained.safetensors")
        checkpoint.save_optimizer(tmp, self.opt)
        (tmp / "state.json").write_text(json.dumps({"config": asdict(self.cfg), "state": self.state,
                                                    "vision_config": self.model.config.vision_config.to_dict()},
                                                   indent=1, default=str))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final

    def _append(self, row: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def _log(self, losses: list[dict]) -> dict:
        t0 = time.time()
        acc = task_accuracy(self.model, self.processor, self.eval_samples)
        row = {"stage": "deep", "step": self.state["step"], "threads": torch.get_num_threads(),
               "train_min": round(self.state["elapsed_s"] / 60, 2), "eval_min": round((time.time() - t0) / 60, 2),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "phase": "projector" if self.state["step"] <= self.cfg.proj_steps else "lora",
               "lm": round(float(np.mean([x["loss"] for x in losses])), 4) if losses else None,
               "s_per_step": round(self.state["elapsed_s"] / max(1, self.state["step"]), 2),
               "acc": acc, "mean_acc": round(float(np.mean(list(acc.values()))), 4)}
        self.save()
        self._append(row)
        log.info("%s", row)
        return row

    def fit(self) -> dict:
        """Train until `minutes` of wall time or `max_steps`; measure, log and checkpoint every `eval_minutes`."""
        cfg, start = self.cfg, time.time()
        self.model.train()
        self._append({"event": "start", "step": self.state["step"], "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                      "config": asdict(cfg)})
        last, losses, row = start, [], {}
        while self.state["step"] < cfg.max_steps:
            t0 = time.time()
            losses.append(self.step())
            self.state["elapsed_s"] += time.time() - t0
            now = time.time()
            done = now - start >= cfg.minutes * 60 or self.state["step"] >= cfg.max_steps
            if now - last >= cfg.eval_minutes * 60 or done or self.state["step"] == cfg.proj_steps:
                row, losses, last = self._log(losses), [], time.time()
                if done:
                    break
        return row
