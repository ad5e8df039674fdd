"""The deep organism: a LLaVA whose language model is the pretrained Gemma-3-270M (18 layers).

Why `LlavaForConditionalGeneration` with a Gemma 3 *text* model rather than `Gemma3ForConditionalGeneration`:
the latter expects a SigLIP tower with a 4x4 average-pooling projector and attends bidirectionally within an
image, while the study is about LLaVA-1.5 (CLIP tower, MLP projector, causal attention over image tokens).
Keeping the shipped organism's CLIP tower and the LLaVA wiring makes the two organisms differ only in their
language model: 18 pretrained layers (K = 2 is early, as in LLaVA-1.5's 32) against 4 trained from scratch.

Gemma's vocabulary has no image placeholder, so `<unused0>` (never produced by its tokenizer from text)
stands for `<image>`: its embedding is always replaced by projected image features. Prompt:
`<bos><image>*144 \\n{question}\\nAnswer:`, answer ` {answer}<eos>`.

The language model is adapted with LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language
Models", arXiv:2106.09685): W x + (alpha / r) B A x on the attention and MLP projections, A Gaussian-
initialised and B zero, so training starts from the pretrained model. The repository ships only what was
trained here (vision tower, projector, LoRA factors); `assemble` rebuilds the model from the converted
Gemma and merges the factors into plain `nn.Linear` weights, so the engine sees an ordinary Gemma 3.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Gemma3ForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from tpx.organism import draw, gemma

IMAGE_TOKEN = "<unused0>"
SHALLOW = Path(__file__).resolve().parents[2] / "data" / "organism" / "llava-organism"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}" + IMAGE_TOKEN + "{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ '\\n' + item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\\nAnswer:' }}{% else %} {{ message['content'] if message['content'] is string "
    "else message['content'][0]['text'] }}<eos>{% endif %}{% endfor %}"
)


def build_processor(gemma_dir: Path) -> LlavaProcessor:
    """Gemma's tokenizer (left padding) + the organism's 96x96 image processor; `<image>` is `<unused0>`."""
    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        raise ValueError(f"the Gemma tokenizer in {gemma_dir} has no {IMAGE_TOKEN} token")
    tokenizer.padding_side = "left"
    image_processor = CLIPImageProcessorPil(
        do_resize=True, size={"height": draw.IMAGE, "width": draw.IMAGE}, do_center_crop=False,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=draw.PATCH,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(gemma_dir: Path, vision_config: dict, image_token_id: int,
                seed: int = 0) -> LlavaForConditionalGeneration:
    """LLaVA(CLIP tower of `vision_config`, 2-layer projector, Gemma-3-270M) with the pretrained LM loaded.

    The tower and projector keep their seeded random initialisation (load trained ones afterwards).
    Float32, sdpa attention.
    """
    lm = Gemma3ForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32)
    text = lm.config.to_dict() | {"model_type": "gemma3_text"}
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision_config), text_config=text, image_token_id=image_token_id,
        image_seq_length=draw.GRID * draw.GRID, vision_feature_layer=-1, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", tie_word_embeddings=lm.config.tie_word_embeddings,
    )
    config.dtype = torch.float32
    config.text_config.dtype = torch.float32
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)  # not on "meta": rotary and embed_scale are plain buffers
    model.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
    if model.lm_head.weight is not model.model.language_model.embed_tokens.weight:
        raise RuntimeError("lm_head is not tied to the Gemma embedding")
    model.set_attn_implementation("sdpa")
    del lm
    return model.float()


def shallow_vision(folder: Path = SHALLOW) -> tuple[dict, dict[str, torch.Tensor]]:
    """The shipped organism's vision config and tower weights (the deep organism starts from them)."""
    config = json.loads((folder / "config.json").read_text())["vision_config"]
    keep = {k: v for k, v in config.items() if k in CLIPVisionConfig().to_dict() and k not in ("dtype",)}
    weights = {k.split("vision_tower.", 1)[1]: v for k, v in load_file(folder / "model.safetensors").items()
               if "vision_tower." in k}  # saved as `vision_tower.*` (older layout) or `model.vision_tower.*`
    return keep, weights


class LoRALinear(nn.Module):
    """`base(x) + (alpha / rank) * B(A(x))` with `base` frozen (Hu et al. 2022); B starts at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base, self.rank, self.scale = base, rank, alpha / rank
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features, generator=generator) / math.sqrt(base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    @property
    def weight(self) -> torch.Tensor:  # HF code reads `.weight.dtype` / `.weight.device` of projections
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t().to(x.dtype)) @ (self.lora_B.t() * self.scale).to(x.dtype)

    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` with W + scale * B A (float32 arithmetic, then the base dtype)."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            delta = (self.lora_B.float() @ self.lora_A.float()) * self.scale
            out.weight.copy_((self.base.weight.float() + delta).to(out.weight.dtype))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _lora_sites(model: LlavaForConditionalGeneration, targets: tuple[str, ...]):
    for name, module in model.model.language_model.named_modules():
        for child_name, child in module.named_children():
            if child_name in targets and isinstance(child, (nn.Linear, LoRALinear)):
                yield f"{name}.{child_name}", module, child_name, child


def add_lora(model: LlavaForConditionalGeneration, rank: int, alpha: float, seed: int,
             targets: tuple[str, ...] = LORA_TARGETS) -> int:
    """Wrap every `targets` projection of the language model in a `LoRALinear`; returns how many were wrapped."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    unknown = set(targets) - set(LORA_TARGETS)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}; allowed: {LORA_TARGETS}")
    g = torch.Generator().manual_seed(seed)
    n = 0
    for _, parent, child_name, child in list(_lora_sites(model, targets)):
        if isinstance(child, nn.Linear):
            setattr(parent, child_name, LoRALinear(child, rank, alpha, g))
            n += 1
    return n


def lora_state(model: LlavaForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The LoRA factors by site name (`layers.3.self_attn.q_proj.lora_A`, ...)."""
    out = {}
    for name, _, _, child in _lora_sites(model, LORA_TARGETS):
        if isinstance(child, LoRALinear):
            out[f"{name}.lora_A"], out[f"{name}.lora_B"] = child.lora_A.detach(), child.lora_B.detach()
    return out


def load_lora(model: LlavaForConditionalGeneration, state: dict[str, torch.Tensor]) -> None:
    """Copy saved factors into the model's `LoRALinear`s (exactly the saved sites, or an error)."""
    sites = {name: child for name, _, _, child in _lora_sites(model, LORA_TARGETS) if isinstance(child, LoRALinear)}
    saved = {k.rsplit(".", 1)[0] for k in state}
    if saved != set(sites):
        raise ValueError(f"LoRA sites differ: {len(saved - set(sites))} saved only, {len(set(sites) - saved)} "
                         "in the model only")
    with torch.no_grad():
        for name, child in sites.items():
            child.lora_A.copy_(state[f"{name}.lora_A"])
            child.lora_B.copy_(state[f"{name}.lora_B"])


def merge_lora(model: LlavaForConditionalGeneration) -> int:
    """Replace every `LoRALinear` by its merged `nn.Linear`; returns how many were merged."""
    sites = [(p, c, m) for _, p, c, m in _lora_sites(model, LORA_TARGETS) if isinstance(m, LoRALinear)]
    for parent, child_name, child in sites:
        setattr(parent, child_name, child.merged())
    return len(sites)
