"""Estimators: pure functions on NumPy/CuPy arrays (no files, no models, no printing)."""
from .discrete import (
    DEFAULT_THRESHOLDS, default_threshold, entropy, joint_counts, js_subset_separation,
    kl_selectivity, labeled_mutual_information, mutual_information, quantile_edges, quantize,
    specific_information, subset_classes, subset_masks, threshold_edges, uniform_edges,
)
from .gaussian import (
    constant_units, copnorm, entropy_bias, gaussian_entropy, gcmi_mixture_cd, gcmi_model_cd,
)
from .oinfo import LABELS, CopulaModel, copula_model, n_multiplets, o_information, search_multiplets

__all__ = ["DEFAULT_THRESHOLDS", "default_threshold", "entropy", "joint_counts",
           "js_subset_separation", "kl_selectivity", "labeled_mutual_information",
           "mutual_information", "quantile_edges", "quantize", "specific_information",
           "subset_classes", "subset_masks", "threshold_edges", "uniform_edges",
           "constant_units", "copnorm", "entropy_bias", "gaussian_entropy", "gcmi_mixture_cd",
           "gcmi_model_cd", "LABELS", "CopulaModel", "copula_model", "n_multiplets", "o_information",
           "search_multiplets"]
