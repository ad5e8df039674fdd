"""tpx: a token-pruning lab for multimodal LLMs.

Reproduces Wen et al., "Token Pruning in Multimodal Large Language Models: Are We Solving the Right Problem?"
(Findings of ACL 2025, arXiv 2502.11501). The public surface is small: `plan` (a pruning configuration checked
and laid out in stages, pure), `pruning` (the engine's context manager, which runs a plan), `get_method` /
`list_methods` (the registry) and `load` (models and processors). Importing tpx costs only torch;
transformers is imported when a model is loaded or pruned. (`tpx.plan` is the function; its module's other
names come with `from tpx.plan import Plan, reachable`.)
"""

from __future__ import annotations

from typing import Any

from tpx.methods import get_method, list_methods
from tpx.plan import plan

__all__ = ["get_method", "list_methods", "load", "plan", "pruning"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # lazy: these pull in transformers
    if name == "pruning":
        from tpx.engine import pruning

        return pruning
    if name == "load":
        from tpx.models import load

        return load
    raise AttributeError(f"module 'tpx' has no attribute {name!r}")
