"""Evaluation on the world (paper §5, Tables 3-4, App. A.4): judges that know the ground truth, SC / PQ / O, tables.

The paper scores every output by hand with ImagenHub's rubric [P §5.1]: **SC** (semantic consistency) and **PQ**
(perceptual quality) in {0, 0.5, 1}; with several conditions SC is the *least* satisfied one; per task
**O = sqrt(mean SC x mean PQ)** (Table 4). On the world, judges answer one question per condition:

| condition | judge | kind |
|---|---|---|
| `objects` | each plain object of the caption (unstyled targets): its named colour's soft coverage inside its named 3x3 cell, then its shape by sub-pixel template match against the world's own silhouettes | analytic |
| `control` | re-extract the control from the output (under a style: coarse-structure correlation with the control map, as `layout`): edge/sketch -> Canny of the output (`world.edge_map`), chance-corrected F1 with tolerance; mask -> foreground IoU (`world.mask_map` of the estimated foreground); depth -> Spearman rank correlation with `depth_float` of the output's foreground (one layer) | analytic |
| `layout` | style transfer keeps the content's layout: correlation of coarse structure maps with the content image | analytic |
| `subject` | each reference subject ranked among itself and 7 distractor identities of its region, each rendered in its place in the target scene: colour histogram of its box (`judge_subject`); SC 1 at rank 1, 0.5 at rank 2 | rendered |
| `style` | the reference style ranked among itself and 7 distractors of its region, each applied to the target scene: colour histogram + texture spectrum (`judge_style`) | rendered |
| PQ | realism: clean render vs degraded (noise, blur, ghosting, smooth noise fields, static); qualifies on clean renders and the strong degradations, catches ~85 % of blur/ghosting | learned |

The realism judge is trained in seconds on rendered world images at 32 and 64 px (`train_judges`), cached under
`data/judges/realism.npz`; it and the identity judges are validated on held-out renders, clean and degraded
(`data/judges/report.json`); a judge is used only where it qualifies (accuracy >= 95 %, `QUALIFY`; identity judges
also >= 85 % under blur, noise and colour shift), otherwise its condition is reported as not judged.

    >>> ex = tasks.sample("edge_to_image", 4, 0, 32, split="test")
    >>> scores = score_examples(ex, [e.target for e in ex])   # ground truth: SC ~ 1
    >>> table = evaluate_models({"Instruct-Imagen": gen}, n=16)
"""
from .judges import (  # noqa: F401
    IN_DOMAIN, ZERO_SHOT, CONTEXT_USE_MIN_N, QUALIFY, EvalError, THRESHOLDS, grade, unit_float, resize_u8,
    foreground, edge_f1, iou, spearman, shape_scores, colour_coverage, judge_object, SHAPE_TOL, BLANK_STD,
    judge_objects, judge_control, judge_layout, judge_features, DEGRADATIONS, degrade,
    train_judges, validate_judges, load_judges, IDENTITY_CANDIDATES, style_descriptor, judge_subject,
    judge_style, sample_like, judge_data, VALIDATION_DEGRADATIONS, validate_identity_judges, judge_realism)
from .scores import (  # noqa: F401
    GROUND_TRUTH, NOISE, conditions, score_image, overall, kid, score_examples, model_batch, model_variant, generate, context_use,
    context_alignment, context_use_markdown, NAMES, display_name, evaluate_models, averages, intervals, intervals_markdown,
    table_markdown,
    plot_fig4, cli_eval)
