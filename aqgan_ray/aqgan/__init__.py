"""AQGAN: a conditional generator of quantization configs, trained once on the evaluation store,
asked for a target accuracy and/or a hardware budget.

- ``model``: the networks (generator, discriminator, predictor ensemble, residual GP); pure torch.
- ``data``: stored evaluations as training tensors; ``fit``: training and its held-out metrics.
- ``checkpoint``: the weights-only checkpoint; ``trained.TrainedGenerator``: what users hold.
- ``generate``: proposals, selection under a budget, verification rounds.
- ``hw_tune``: hardware tuning at one design point; AQGAN's proposer in the comparison.
- ``refine``: active refinement; ``train``: the whole training stage on an evaluation service.
- ``tune``: the hyperparameter search on Ray Tune (imports Ray; used only when asked for).
"""

from aqgan_ray.aqgan.checkpoint import Loaded, load_checkpoint, model_id, read_checkpoint
from aqgan_ray.aqgan.generate import Proposal, Query, Verified
from aqgan_ray.aqgan.trained import TrainedGenerator, load_generator

__all__ = [
    "Loaded",
    "Proposal",
    "Query",
    "TrainedGenerator",
    "Verified",
    "load_checkpoint",
    "load_generator",
    "model_id",
    "read_checkpoint",
]
