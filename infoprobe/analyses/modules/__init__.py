"""Modules in the weight graph: spectral clustering, clusterability, and lesion tests of the
importance and output coherence of sub-clusters.

Sources: Hod, Casper, Filan et al., "Importance and Coherence: Methods for Evaluating
Modularity in Neural Networks" (Sections 2-3; Appendices A.1, A.3, A.4, A.6, A.7, A.9, A.10)
and Filan et al. 2021, "Clusterability in Neural Networks" (n-cut against shuffled networks).

A *sub-cluster* is the set of units of one cluster in one hidden layer. A *lesion* replaces
the post-activation of its units through the intervention engine
(:class:`infoprobe.interventions.Evaluator`): by default by the activation of zero input,
sigma(0) -- their incoming weights and biases set to zero, as the authors' code does;
``lesion="activation_of_bias"`` zeroes the weights only (sigma(b), the paper's wording).
Every statistic is compared with *random sub-clusters*: the same number of units drawn from
the same layer among the units still in the graph.

Seams: :mod:`.partition` (clustering, clusterability), :mod:`.lesions` (lesion tests,
taxonomy, combined p values), :mod:`.double` (double lesions), :mod:`.visualise`
(correlation-based visualisations) and :mod:`.analysis` (all of them for one network).
"""
from ...estimators.correlation import align_signs
from .analysis import ModulesConfig, ModulesResult, modules, network_table, prunable_plan
from .double import double_lesions
from .lesions import (CATEGORIES, LESIONS, Lesioner, UnreachableAlphaWarning, classify, coherence_range, combine,
                      draws_needed, lesion_tests, random_units, warn_unreachable)
from .partition import VARIANTS, Partition, clusterability, load_graph, partition
from .visualise import correlation_visualisations, image_shape

__all__ = ["CATEGORIES", "LESIONS", "VARIANTS", "Lesioner", "ModulesConfig", "ModulesResult", "Partition", "UnreachableAlphaWarning",
           "align_signs", "classify", "clusterability", "coherence_range", "combine", "correlation_visualisations",
           "double_lesions", "draws_needed", "image_shape", "lesion_tests", "load_graph", "modules", "network_table",
           "partition", "prunable_plan", "random_units", "warn_unreachable"]
