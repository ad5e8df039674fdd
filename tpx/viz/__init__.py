"""Figures: which visual tokens survive, drawn over the image the model saw.

Viz functions take results (a `TraceEntry`, pixel values) and an optional axis, return the `Figure` and
compute nothing experimental. Style is applied inside `plt.rc_context`, never globally. `save` writes PNG
(200 dpi) and PDF with no creation date, so re-running a notebook does not churn git.

One module per study question (`core` holds the shared style and the per-forward figures); every
figure function is importable from `tpx.viz`.
"""

from tpx.viz.core import colour, model_view, kept_tokens, keep_frequency_maps, save
from tpx.viz.position import attention_distance, method_table, relative_bars
from tpx.viz.redundancy import redundancy_curves, overlap_heatmap
from tpx.viz.guidance import score_panels, panel_keep_maps
from tpx.viz.alpha import alpha_heatmap, alpha_curves, alpha_kept
from tpx.viz.latency import flops_vs_time, attention_cost, tokens_per_layer
from tpx.viz.training import accuracy_vs_tokens
from tpx.viz.protocol import vision_need, task_drops, seed_spread
from tpx.viz.effects import depth_curve, effects, estimates

__all__ = ["accuracy_vs_tokens", "depth_curve", "effects", "estimates", "alpha_curves", "alpha_heatmap", "alpha_kept", "attention_cost",
           "attention_distance", "colour", "flops_vs_time", "keep_frequency_maps", "kept_tokens",
           "method_table", "model_view", "overlap_heatmap", "panel_keep_maps", "redundancy_curves",
           "relative_bars", "save", "score_panels", "seed_spread", "task_drops", "tokens_per_layer",
           "vision_need"]
