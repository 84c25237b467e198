"""Frivolous units: prunability by random ablation, redundancy by PCA, width sweeps, and the
thinner network that computes (almost) the same function.

Source: Casper, Boix et al., "Frivolous Units: Wider Networks Are Not Really That Wide"
(AAAI 2021), Sections 3-5 and the appendix on removing redundant units. The defaults are
the authors' choices:

- *Prunability* (:mod:`.prunability`): a random permutation of a layer's units is ablated
  cumulatively at the fractions 0, 1/6, ..., 1 (post-activations multiplied by 0, no
  rescaling) and the metric is the fraction of predictions that do not change relative to
  the intact network. Dense units are neurons; conv units are channel x position (each
  spatial location of each feature map). The prunable fraction is where the curve crosses
  1 - tolerance (0.2), by linear interpolation; 3 permutations, the largest value kept.
- *Redundancy* (:mod:`.redundancy`): the layer's activation matrix (conv: channels are the
  units and spatial positions are samples, randomly subsampled to at most 50,000 rows); PCA;
  the number of non-redundant units is the number of components that leave at most 5% of
  the variance unexplained; redundant = units - that number.
- *Plans* (:mod:`.plans`): remove the prunable units, or refactor the redundant ones.
- *Width sweeps* (:mod:`.sweep`): counts normalised by the unit count of the widest model,
  and the gain g (average growth factor per doubling of the width).

Ablations go through the intervention engine (:class:`infoprobe.interventions.Evaluator`).
"""
from .analysis import FrivolousConfig, FrivolousResult, frivolous
from .plans import prunable_plan, refactor_plan
from .prunability import CONV_UNITS, FRACTIONS, MODES, Prunability, checked_fractions, hidden_layers, prunability
from .redundancy import QUANTILES, activation_matrices, layer_kinds, open_source, redundancy
from .sweep import MEASURES, SweepResult, width_sweep

__all__ = ["CONV_UNITS", "FRACTIONS", "MEASURES", "MODES", "QUANTILES", "FrivolousConfig", "FrivolousResult", "Prunability",
           "SweepResult", "activation_matrices", "checked_fractions", "frivolous", "hidden_layers", "layer_kinds",
           "open_source", "prunability", "prunable_plan", "redundancy", "refactor_plan", "width_sweep"]
