"""Interpretability: our models as a TransformerLens bridge (`bridge`), and the analyses built on them:
attention patterns and head scores (`attention`), MLP neurons (`neurons`), ablations (`ablation`), logit lens
and direct logit attribution (`logit_lens`), activation patching (`patching`), steering (`steering`), circuits
read off the weights (`circuits`), and a recipe that trains a model in which induction heads form
(`induction`). Analyses return tensors and dataclasses; their plot functions take those. The core never
imports this package."""
