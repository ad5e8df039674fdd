"""Latency table of the study's Q5a on a CPU proxy of LLaVA-1.5: time, memory, FLOPs and KV cache side by side.

The proxy is `benchmarks/prefill.py`'s random `LlavaForConditionalGeneration` (576 image tokens, a tiny vision
tower, a Llama of `--layers` × `--hidden`). `tpx.latency.measure` times the unpruned model and each method at
`--retention`, interleaved, with SDPA and (with `--eager`) again with eager attention, FastV then reading
eager attention maps as the original code does. Columns: prefill, decode per token and end-to-end time
(median ± IQR), the scorer + selector alone, peak memory, analytic vs counted FLOPs and KV-cache size, each
with its ratio to the unpruned run.

Usage: python benchmarks/latency.py [--hidden 512] [--layers 8] [--methods fastv,random,pooling] [--eager] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from prefill import proxy  # noqa: E402

from tpx.data import Sample, sample_picture  # noqa: E402
from tpx.latency import measure  # noqa: E402

COLUMNS = ["method", "prefill_ms", "prefill_iqr_ms", "prefill_speedup", "decode_ms_per_token", "e2e_ms", "e2e_speedup",
           "select_ms", "peak_mem_mb", "flops_rel", "flops_error_pct", "kv_mb", "kv_rel"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--methods", default="fastv,random,pooling")
    ap.add_argument("--retention", type=float, default=0.25)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--min-run-time", type=float, default=1.0)
    ap.add_argument("--eager", action="store_true", help="also measure eager attention (FastV from eager maps)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # on a shared machine, 1 avoids waiting on a descheduled thread

    model, processor = proxy(args.hidden, args.layers, args.device)
    q = "What is shown in the image? Answer briefly."
    samples = [Sample("picture", sample_picture(), q, q, [""], "picture", "picture")]
    common = dict(retentions=[args.retention], max_new_tokens=args.max_new_tokens, rounds=args.rounds,
                  min_run_time=args.min_run_time, progress=False)
    tables = [measure(model, processor, samples, methods=args.methods.split(","), attn_implementation="sdpa", **common)]
    if args.eager:
        tables.append(measure(model, processor, samples, methods=["fastv"], attn_implementation="eager",
                              attention="maps", **common))
    df = pd.concat(tables, ignore_index=True)
    df["method"] = df["method"] + " (" + df["attn_implementation"] + ")"
    df["flops_error_pct"] = 100 * (df["flops_counted"] / df["flops"] - 1)
    df["kv_mb"] = df["kv_bytes"] / 2 ** 20
    row = df.iloc[0]
    print(f"proxy LLaVA: Llama {args.layers} x {args.hidden}, {row.n_tokens} tokens ({row.n_visual} visual), "
          f"retention {args.retention}, {args.max_new_tokens} new tokens; {args.device}, "
          f"{torch.get_num_threads()} threads; median of {args.rounds} interleaved rounds; memory: {row.peak_mem_kind}")
    with pd.option_context("display.width", 250, "display.float_format", "{:.2f}".format):
        print(df[COLUMNS].to_string(index=False))


if __name__ == "__main__":
    main()
