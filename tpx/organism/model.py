"""The organism: a tiny but real LLaVA (CLIP vision tower, projector, Llama with RoPE) and its processor.

Everything is built from configs, offline: a word-level tokenizer over the suite's vocabulary,
a `LlavaProcessor` with `CLIPImageProcessorPil` (torchvision is unusable here), and a
`LlavaForConditionalGeneration`. `save` writes model + processor so that
`AutoModelForImageTextToText.from_pretrained(path)` and `AutoProcessor.from_pretrained(path)`
load them through the same code path as `llava-hf/llava-1.5-7b-hf`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from tpx.organism import draw, tasks

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
PROMPT = "USER: <image>\n{question} ASSISTANT:"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %} </s> {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class OrganismConfig:
    """Sizes of the organism. Defaults follow the probe's step-cost table (2 CPU cores)."""

    vision_hidden: int = 128
    vision_mlp: int = 512
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 192
    text_mlp: int = 512
    text_layers: int = 4
    text_heads: int = 4
    max_positions: int = 512

    def to_dict(self) -> dict:
        return asdict(self)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the suite's closed vocabulary; `<s>` is prepended to every encoding."""
    vocab = {w: i for i, w in enumerate(SPECIALS + tasks.vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left",
    )


def build_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> LlavaProcessor:
    """`LlavaProcessor` mapping pixels to [-1, 1] at 96x96 and expanding `<image>` into 144 placeholders."""
    tokenizer = build_tokenizer() if tokenizer is None else tokenizer
    image_processor = CLIPImageProcessorPil(
        do_resize=True, size={"height": draw.IMAGE, "width": draw.IMAGE}, do_center_crop=False,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=draw.PATCH,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token="<image>",
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, config: OrganismConfig | None = None,
                seed: int = 0) -> LlavaForConditionalGeneration:
    """A randomly initialised organism (sdpa attention) sized by `config`."""
    cfg = OrganismConfig() if config is None else config
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_mlp, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, image_size=draw.IMAGE, patch_size=draw.PATCH,
        projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_mlp,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads, max_position_embeddings=cfg.max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=draw.GRID * draw.GRID, vision_feature_layer=-1,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.set_attn_implementation("sdpa")
    return model


def save(model: LlavaForConditionalGeneration, processor: LlavaProcessor, path: str | Path) -> None:
    """Write safetensors weights, config and processor files to `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)



@contextmanager
def pooled(model: LlavaForConditionalGeneration, pool: int) -> Iterator[None]:
    """Inside the block, the projected image tokens are average-pooled `pool`×`pool` (hook E's 2-D pooling).

    A forward hook on the projector maps its (B, N, D) output to (B, N / pool², D) with the very stage tpx's
    engine runs for `tpx.plan("pooling", 1 / pool², hook="E")` (`Stage.select`, how the engine calls every
    method); the prompt must then hold N / pool² image tokens at the positions `batch.pooled_index`
    gives (`batch.prompt_positions`). Used to train and evaluate the training-aware checkpoint (study Q5b;
    compare Qwen2-VL's 2×2 merger). `pool=1` changes nothing.
    """
    from tpx.layout import Layout
    from tpx.plan import plan

    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1 or draw.GRID % pool:
        raise ValueError(f"pool must be a positive int dividing the {draw.GRID}x{draw.GRID} grid, got {pool!r}")
    if pool == 1:
        yield
        return
    grid = (draw.GRID, draw.GRID)
    stage = plan("pooling", 1 / pool**2, hook="E", layout=Layout(grids=(grid,))).stages[0]

    def hook(module, args, out):
        return stage.select({"features": out, "grid": grid}, [grid]).merged

    handle = model.model.multi_modal_projector.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
