"""Estimators: pure functions on NumPy/CuPy arrays (no files, no models, no printing)."""
from .discrete import (
    DEFAULT_THRESHOLDS, default_threshold, entropy, joint_counts, js_subset_separation,
    kl_selectivity, labeled_mutual_information, mutual_information, quantile_edges, quantize,
    specific_information, subset_classes, subset_masks, threshold_edges, uniform_edges,
)

__all__ = ["DEFAULT_THRESHOLDS", "default_threshold", "entropy", "joint_counts",
           "js_subset_separation", "kl_selectivity", "labeled_mutual_information",
           "mutual_information", "quantile_edges", "quantize", "specific_information",
           "subset_classes", "subset_masks", "threshold_edges", "uniform_edges"]
