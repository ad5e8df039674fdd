"""The model organism: a synthetic visual-QA suite and the tiny trained LLaVA that ships in `data/organism/`.

Modules: `font` (glyph bitmaps), `draw` (scenes and per-patch labels), `tasks` (question families),
`suite` (samples, splits, question-only priors), `model` (LLaVA, tokenizer, processor), `batch`
(training rows), `heads` (vision auxiliary heads), `evaluate`, `checkpoint`, `train`, `cli`.
The deep organism (Gemma-3-270M inside): `gemma` (install check, one-time conversion), `deep` (model,
processor, LoRA), `deep_train` (packed resumable training), `deep_card` (assembly for `tpx.load`, export).
Nothing is imported here, so `import tpx.organism.suite` does not pay for transformers.
"""
