"""The About tab: how ELLA works, and how to read the views."""

import gradio as gr

ABOUT = """
## How ELLA works

[ELLA](https://arxiv.org/abs/2403.05135) keeps Stable Diffusion 1.5's UNet frozen and replaces its
CLIP text encoder by a frozen large language model, FLAN-T5-XL. A small trained network, the
**Timestep-Aware Semantic Connector (TSC)**, sits between them: 64 learnable queries read the T5
tokens through 6 attention blocks and become the 64 tokens the UNet attends to. Every
normalisation in the connector is modulated by the denoising timestep, so the queries read the
prompt differently at every step. The paper's argument: early, noisy steps shape layout and
colour, late steps shape detail and style, so the condition should change over time.

## Reading the views

- **Query x word heatmap**: at the chosen step, how much each of the 64 queries attends to each
  prompt word (queries grouped by the word they read most).
- **Prompt coloured by word share**: the same step, summed over queries.
- **Token x timestep map**: the paper's Fig. 8. Rows are timesteps (high noise on top). The
  normalisations are explained under the figure; `raw` also shows attention to the latents
  themselves and to the end and padding tokens.
- **Word maps**: where a word lands in the image. For CLIP this is the UNet's cross-attention to
  the word's tokens. For ELLA the UNet attends to queries, not words, so the map chains the UNet's
  attention to the queries with the connector's attention from queries to words, rolled out
  through its blocks: **attention flow**.
- **x0 previews**: the model's current estimate of the final image at that step.

Attention is not attribution: these maps show where attention goes, not what caused a pixel.

Weights: [QQGYLab/ELLA](https://huggingface.co/QQGYLab/ELLA) and
[stable-diffusion-v1-5](https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5).
"""


def about_tab() -> None:
    """The About tab's text."""
    gr.Markdown(ABOUT)
