"""Interpretability: our models as a TransformerLens bridge (`bridge`), and the analyses built on them:
attention patterns and head scores (`attention`), MLP neurons (`neurons`), ablations (`ablation`), logit lens
and direct logit attribution (`logit_lens`), activation patching (`patching`), steering (`steering`), circuits
read off the weights (`circuits`), a recipe that trains a model in which induction heads form
(`induction`), sparse autoencoders on a layer's activations (`sae`) and what their features and the neurons
respond to (`features`), and the same analyses compared across GPT/LLaMA styles and sizes (`compare`).
Analyses return tensors and dataclasses; their plot functions take those. The core never imports this
package."""
