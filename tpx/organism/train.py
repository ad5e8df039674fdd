"""Staged, resumable training of the organism.

Stage `vision`: the CLIP tower alone, with the foreground-weighted dense per-patch auxiliary loss
(`heads.py`), until colour, shape and glyph are recognised on >= `target` of held-out foreground
patches. Stage `lm`: projector + language model on packed multi-question rows (turns isolated by
`batch.turn_mask`, so each is exactly the single-turn prompt and none copies another's answer), the tower frozen
(or slowed by `vision_lr_mult`, keeping its auxiliary loss). The learning rate is warmup-stable-decay
on the step count, so resumption continues the same schedule. Attention maps are never supervised.
"""

from __future__ import annotations

import json
import math
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tpx.organism import batch as B, checkpoint, evaluate, heads, model as M, suite, tasks

log = logging.getLogger(__name__)
STAGES = ("vision", "lm")


@dataclass
class TrainConfig:
    """Everything that defines a stage; saved in each checkpoint."""

    run: str = "organism"
    stage: str = "vision"
    root: str = "data/organism/checkpoints"
    init_from: str | None = None
    seed: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    decay_start: int | None = None
    decay_steps: int = 1000
    max_steps: int = 1_000_000
    minutes: float = 60.0
    eval_minutes: float = 3.0
    target: float = 0.95
    n_eval: int = 100
    n_questions: int = 6
    eos_weight: float = 0.1
    bg_weight: float = 0.1
    vision_lr_mult: float = 0.0
    aux_weight: float = 1.0
    adaptive: bool = False
    prior_draws: int = 5000
    max_objects: int = 5  # objects per free training scene; lower it for an easier curriculum start
    pool: int = 1  # >1: train (and measure) with the projected image tokens average-pooled pool x pool (Q5b)
    bf16: bool = False  # bf16 autocast for the training forward (about 1.5x faster on AVX512-BF16 CPUs)
    threads: int = 0  # 0: pick 1 or 2 by measured step time (the 2 cores are shared)
    model: dict = field(default_factory=lambda: M.OrganismConfig().to_dict())

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.stage == "lm" and self.init_from is None:
            log.warning("lm stage without init_from: the vision tower starts untrained")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Warmup-stable-decay: linear warmup, constant, then linear decay to 10% from `decay_start`."""
    lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
    if cfg.decay_start is not None and step >= cfg.decay_start:
        frac = min(1.0, (step - cfg.decay_start) / max(1, cfg.decay_steps))
        lr *= 1.0 - 0.9 * frac
    return lr


class Trainer:
    """Owns model, auxiliary heads, optimizer and the loop of one stage."""

    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.threads = _Threads(cfg.threads)
        self.cfg = cfg
        self.run_dir = Path(cfg.root) / cfg.run
        self.tokenizer = M.build_tokenizer()
        self.vocab = self.tokenizer.get_vocab()
        self.state = {"step": 0, "elapsed_s": 0.0, "done": False,
                      "task_p": {t: 1.0 for t in tasks.TASKS}}
        ck = checkpoint.ckpt_dir(self.run_dir) if resume else None
        if resume and ck is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {self.run_dir}")
        src = ck or (checkpoint.ckpt_dir(Path(cfg.init_from)) if cfg.init_from else None)
        if cfg.init_from and src is None:
            raise FileNotFoundError(f"init_from={cfg.init_from!r} holds no checkpoint")
        self.model = checkpoint.load_model(src) if src else M.build_model(
            self.tokenizer, M.OrganismConfig(**cfg.model), seed=cfg.seed)
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed + 1)
            self.aux = heads.AuxHeads(self.model.config.vision_config.hidden_size)
        if src:
            checkpoint.load_aux(src, self.aux)
        self.vision = self.model.model.vision_tower
        self._setup_params()
        if ck:
            checkpoint.load_optimizer(ck, self.opt)
            self.state.update(checkpoint.load_state(ck)["state"])
        elif src:
            source = checkpoint.load_state(src)
            self.state["init_from_step"] = source["state"]["step"]  # where this run branched off (the card's stage)
            if cfg.stage == "lm" and source["config"]["stage"] == "vision":
                self._standardise_projector()  # a fine-tune from an lm checkpoint keeps its trained projector
        self._captured: dict = {}
        self.vision.register_forward_hook(
            lambda m, i, o: self._captured.__setitem__("h", o.hidden_states[-1][:, 1:]))
        self.eval_scenes = B.eval_scenes("val", cfg.n_eval * 3)
        self.eval_samples = suite.build("val", cfg.n_eval) if cfg.stage == "lm" else []

    def _setup_params(self) -> None:
        cfg = self.cfg
        vision_params = list(self.vision.parameters()) + list(self.aux.parameters())
        if cfg.stage == "vision":
            groups = [{"params": vision_params, "lr_mult": 1.0}]
            for p in self.model.parameters():
                p.requires_grad_(False)
            for p in self.vision.parameters():
                p.requires_grad_(True)
        else:
            rest = [p for n, p in self.model.named_parameters() if not n.startswith("model.vision_tower.")]
            groups = [{"params": rest, "lr_mult": 1.0}]
            train_vision = cfg.vision_lr_mult > 0
            for p in vision_params:
                p.requires_grad_(train_vision)
            if train_vision:
                groups.append({"params": vision_params, "lr_mult": cfg.vision_lr_mult})
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01)

    @torch.no_grad()
    def _standardise_projector(self, n: int = 128) -> None:
        """Data-dependent init: make the projector see standardised tower features."""
        px, _ = B.vision_batch(self.cfg.seed, -1 % 10**9, n)
        h = heads.features(self.vision, px).flatten(0, 1)
        mu, sd = h.mean(0), h.std(0) + 1e-5
        lin = self.model.model.multi_modal_projector.linear_1
        w = lin.weight / sd
        lin.bias.copy_(lin.bias - w @ mu)
        lin.weight.copy_(w)

    def _set_lr(self) -> float:
        lr = lr_at(self.cfg, self.state["step"])
        for g in self.opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        return lr

    def step(self) -> dict:
        cfg, step = self.cfg, self.state["step"]
        lr = self._set_lr()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss, parts = self._loss(step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], 1.0)
        self.opt.step()
        self.state["step"] = step + 1
        return {"lr": lr, **parts}

    def _loss(self, step: int) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        if cfg.stage == "vision":
            px, labels = B.vision_batch(cfg.seed, step, cfg.batch_size)
            loss = heads.loss(self._float(self.aux(heads.features(self.vision, px))), labels, cfg.bg_weight)
            return loss, {"aux": loss.item()}
        b = B.train_batch(self.vocab, cfg.seed, step, cfg.batch_size, cfg.n_questions,
                          self.state["task_p"], cfg.eos_weight, cfg.max_objects, cfg.pool)
        with M.pooled(self.model, cfg.pool):
            out = self.model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                             pixel_values=b.pixel_values)
        ce = F.cross_entropy(out.logits.float().flatten(0, 1), b.targets.flatten(), reduction="none",
                             ignore_index=-100)
        w = b.weights.flatten()
        loss = (ce * w).sum() / w.sum()
        parts = {"lm": loss.item()}
        if cfg.vision_lr_mult > 0:
            aux = heads.loss(self._float(self.aux(self._captured["h"])), b.labels, cfg.bg_weight)
            loss = loss + cfg.aux_weight * aux
            parts["aux"] = aux.item()
        return loss, parts

    @staticmethod
    def _float(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.float() for k, v in logits.items()}

    def measure(self) -> dict:
        """Held-out numbers for the log: vision report always, per-task accuracy in the lm stage."""
        self.model.eval()
        self.aux.eval()
        rep = {"vision": evaluate.vision_report(self.vision, self.aux, self.eval_scenes)}
        if self.cfg.stage == "lm":
            rep["acc"] = evaluate.task_accuracy(self.model, self.vocab, self.eval_samples, pool=self.cfg.pool)
            rep["prior"] = self._prior()
            if self.cfg.adaptive:
                self.state["task_p"] = {t: 0.2 + max(0.0, 1.0 - a) for t, a in rep["acc"].items()}
        self.model.train()
        self.aux.train()
        return rep

    def _prior(self) -> dict:
        path = self.run_dir / "prior_val.json"
        if not path.exists():
            majority = {t: suite.question_only_answers(t, self.cfg.prior_draws) for t in tasks.TASKS}
            prior = suite.prior_accuracy(self.eval_samples, majority)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({k: round(v, 4) for k, v in prior.items()}))
        return json.loads(path.read_text())

    def save(self) -> None:
        checkpoint.save(self.run_dir, self.model, self.aux, self.opt,
                        {"config": asdict(self.cfg), "state": self.state})

    def fit(self, progress: bool = True) -> dict:
        """Train until `minutes` of wall time, `max_steps`, or (vision) the target; log, checkpoint."""
        cfg = self.cfg
        start = time.time()
        last_eval, losses, rep = start, [], {}
        bar = tqdm(total=cfg.max_steps, initial=self.state["step"], desc=f"{cfg.run} {cfg.stage} steps",
                   disable=not progress, mininterval=5)
        self.model.train()
        self.state["done"] = False  # re-decided at the next measurement (a resumed run may have a new target)
        self._append({"event": "start", "step": self.state["step"], "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                      "config": asdict(cfg)})
        while not self.state["done"] and self.state["step"] < cfg.max_steps:
            t0 = time.time()
            losses.append(self.step())
            self.state["elapsed_s"] += time.time() - t0
            self.threads.record(time.time() - t0)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in losses[-1].items()}, refresh=False)
            now = time.time()
            out_of_time = now - start >= cfg.minutes * 60
            if now - last_eval >= cfg.eval_minutes * 60 or out_of_time or self.state["step"] >= cfg.max_steps:
                rep = self._log(losses)
                losses, last_eval = [], time.time()
                if out_of_time:
                    break
        bar.close()
        return rep

    def _append(self, row: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def _log(self, losses: list[dict]) -> dict:
        rep = self.measure()
        if self.cfg.stage == "vision" and rep["vision"]["gate"] >= self.cfg.target:
            self.state["done"] = True
        row = {"stage": self.cfg.stage, "step": self.state["step"], "threads": torch.get_num_threads(),
               "train_min": round(self.state["elapsed_s"] / 60, 2), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "lr": lr_at(self.cfg, self.state["step"]),
               **{k: round(float(np.mean([x[k] for x in losses if k in x])), 4)
                  for k in losses[-1] if k != "lr"}, **rep, "done": self.state["done"]}
        self.save()
        self._append(row)
        log.info("%s", row)
        return row


class _Threads:
    """Use 1 or 2 threads, whichever steps faster: oversubscribed OpenMP on shared cores crawls."""

    WINDOW, PERIOD = 8, 100

    def __init__(self, fixed: int):
        self.fixed, self.n, self.count = fixed, fixed or 2, 0
        self.times: dict[int, list[float]] = {1: [], 2: []}
        torch.set_num_threads(self.n)

    def record(self, seconds: float) -> None:
        if self.fixed:
            return
        self.times[self.n].append(seconds)
        self.count += 1
        phase = self.count % self.PERIOD
        if phase == self.PERIOD - self.WINDOW:
            self.n = 3 - self.n
            self.times[self.n] = []
        elif phase == 0:
            med = {k: float(np.median(v[-self.WINDOW:])) if v else math.inf for k, v in self.times.items()}
            self.n = min(med, key=med.get)
        torch.set_num_threads(self.n)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run one stage (or continue it with `resume`) and return the last logged row."""
    return Trainer(cfg, resume=resume).fit(progress=progress)


