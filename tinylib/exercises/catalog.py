"""Every exercise of every notebook, registered: what the tests (and a table of contents) need.

A notebook imports only its own module; this one imports them all, including the interpretability ones that
pull in transformers and TransformerLens.
"""

from tinylib.exercises import (  # noqa: F401  (importing a module registers its exercises)
    nb01_data,
    nb02_budget,
    nb03_training,
    nb04_generation,
    nb05_attention,
    nb06_neurons,
    nb07_ablations,
    nb08_induction,
    nb09_finetune,
    nb10_experiments,
    nb11_architecture,
    nb12_build,
    nb13_evaluation,
    nb14_sae,
)
from tinylib.exercises.checks import REGISTRY

__all__ = ["REGISTRY"]
