"""The graph of a model, read by tracing it with torch.fx (`sites`): its normalisation layers (kind, axis,
depth, stage, block, channels, role), activation sites (kind, axis) and residual additions. Every pass finds
what it measures here."""

from rfprobe.graph.sites import (ACTIVATION_KINDS, BATCHNORM_KINDS, BN_TYPES, NORM_KINDS, WEIGHT_TYPES,
                                 ZERO_OUTPUT_KINDS, ActivationSite, AddSite, NormSite, Sites,
                                 activation_kind, affine_parameters, enclosing_module, find_sites, keeps_running_stats,
                                 norm_kind, trace)

__all__ = ["ACTIVATION_KINDS", "BATCHNORM_KINDS", "BN_TYPES", "NORM_KINDS", "WEIGHT_TYPES", "ZERO_OUTPUT_KINDS",
           "ActivationSite", "AddSite", "NormSite", "Sites", "activation_kind",
           "affine_parameters", "enclosing_module", "find_sites", "keeps_running_stats", "norm_kind", "trace"]
