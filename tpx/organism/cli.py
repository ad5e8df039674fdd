"""`python -m tpx organism train ...` (also `python -m tpx.organism.cli train ...`); `deep-train` for organism-deep."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, fields

from tpx.organism import checkpoint, train as T


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tpx organism", description="Train the tpx model organism, one stage per call.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run or resume one training stage")
    t.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    for f in fields(T.TrainConfig):
        if f.name == "model":
            t.add_argument("--model", type=json.loads, default=None, help="model sizes as JSON (OrganismConfig)")
        elif f.type in ("bool", bool):
            t.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, action="store_true", default=None)
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            if f.name == "decay_start":
                kind = int
            t.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None)
    d = sub.add_parser("deep-train", help="run or resume the deep organism's training (Gemma-3-270M inside)")
    d.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    from tpx.organism.deep_train import DeepConfig

    for f in fields(DeepConfig):
        if str(f.type) == "bool":
            d.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=lambda v: v.lower() in ("1", "true"),
                           default=None, help="true or false")
        else:
            kind = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
            d.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None)
    g = sub.add_parser("deep-diagnose",
                       help="is the digit in the deep run's image tokens, and does the answer look at it")
    g.add_argument("--run", default="deep0", help="the run under --root")
    g.add_argument("--root", default="data/organism/checkpoints")
    g.add_argument("--n", type=int, default=16, help="read samples behind the attention table")
    x = sub.add_parser("deep-export", help="export the deep organism's run: trained parts, card, Gemma terms")
    x.add_argument("--run", default="data/organism/checkpoints/deep0", help="the run folder")
    x.add_argument("--out", default=None, help="default: data/organism/llava-organism-deep")
    x.add_argument("--n-per-task", type=int, default=200)
    x.add_argument("--note", default="", help="a paragraph for the card's training section")
    x.add_argument("--prior-draws", type=int, default=20000, help="training questions behind the question-only prior")
    x.add_argument("--depth-layers", type=lambda v: [int(k) for k in v.split(",") if k.strip()], default=None,
                   help="comma-separated K of the depth curve (default: every layer; empty: none)")
    x.add_argument("--depth-n", type=int, default=25, help="test samples per task of the depth curve")
    e = sub.add_parser("export", help="export a run's last checkpoint with a model card (test accuracy)")
    e.add_argument("--runs", nargs="+", required=True, help="the run folders of every stage, in order")
    e.add_argument("--out", required=True, help="e.g. data/organism/llava-organism")
    e.add_argument("--pool", type=int, default=1, help="score with pool x pool pooled tokens (Q5b checkpoint)")
    e.add_argument("--n-per-task", type=int, default=200)
    e.add_argument("--note", default="", help="a paragraph for the card's training section")
    r = sub.add_parser("report", help="print a run's log as a markdown table")
    r.add_argument("--run", required=True)
    # the checkout's checkpoints, so that `report` works from any directory
    r.add_argument("--root", default=str(T.Path(__file__).resolve().parents[2] / "data" / "organism" / "checkpoints"),
                   help="folder of the runs (default: %(default)s)")
    r.add_argument("--every", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "report":
        from tpx.organism import deep_card
        from tpx.organism.evaluate import log_table, measurements

        path = T.Path(args.root) / args.run / "log.jsonl"
        rows = measurements(path)
        deep = bool(rows) and rows[-1].get("stage") == "deep"  # the deep organism's rows carry no prior
        print((deep_card.log_table if deep else log_table)(path, args.every))
        return 0
    if args.command == "export":
        from tpx.organism import card

        report = card.export(args.runs, args.out, args.n_per_task, pool=args.pool, note=args.note)
        print(json.dumps(report, indent=1))
        return 0
    if args.command == "deep-export":
        from tpx.organism import deep_card

        out = deep_card.FOLDER if args.out is None else args.out
        print(json.dumps(deep_card.export(args.run, out, args.n_per_task, note=args.note,
                                                     prior_draws=args.prior_draws, depth_layers=args.depth_layers,
                                                     depth_n=args.depth_n), indent=1))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "deep-train":
        return _deep_train(args)
    if args.command == "deep-diagnose":
        return _deep_diagnose(args)
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "resume")}
    if args.resume:
        base = T.TrainConfig(**given)
        ck = checkpoint.ckpt_dir(T.Path(base.root) / base.run)
        if ck is None:
            raise SystemExit(f"--resume: no checkpoint for run {base.run!r} under {base.root}")
        saved = checkpoint.load_state(ck)["config"]
        cfg = T.TrainConfig.from_dict({**saved, **given})
    else:
        cfg = T.TrainConfig(**given)
    logging.getLogger(__name__).info("config %s", json.dumps(asdict(cfg)))
    T.train(cfg, resume=args.resume)
    return 0


def _deep_diagnose(args: argparse.Namespace) -> int:
    from tpx.organism import deep_train as D, diagnose

    ck = checkpoint.ckpt_dir(T.Path(args.root) / args.run)
    if ck is None:
        raise SystemExit(f"--run: no checkpoint for run {args.run!r} under {args.root}")
    cfg = D.DeepConfig.from_dict({**checkpoint.load_state(ck)["config"], "run": args.run, "root": args.root})
    trainer = D.DeepTrainer(cfg, resume=True)
    model = trainer.model.eval()
    print(f"step {trainer.state['step']}: linear probe to the digit at the glyph patches, held out: tower "
          f"{diagnose.glyph_probe(model, 'tower'):.3f}, projector {diagnose.glyph_probe(model, 'projector'):.3f}")
    table = diagnose.answer_attention(model, trainer.processor, args.n).round(4)
    print("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(str(v) for v in row) + " |")
    return 0


def _deep_train(args: argparse.Namespace) -> int:
    from tpx.organism import deep_train as D

    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "resume")}
    cfg = D.DeepConfig(**given)
    if args.resume:
        ck = checkpoint.ckpt_dir(T.Path(cfg.root) / cfg.run)
        if ck is None:
            raise SystemExit(f"--resume: no checkpoint for run {cfg.run!r} under {cfg.root}")
        cfg = D.DeepConfig.from_dict({**checkpoint.load_state(ck)["config"], **given})
    logging.getLogger(__name__).info("config %s", json.dumps(asdict(cfg)))
    D.DeepTrainer(cfg, resume=args.resume).fit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
