"""The graph of a model, read by tracing it with torch.fx: its BatchNorm sites (with depth, stage, block,
channels and role), ReLU sites and residual additions (`sites`). Every pass finds what it measures here;
this is the layer that grows to other normalisation and activation layers."""

from rfprobe.graph.sites import (BN_TYPES, WEIGHT_TYPES, AddSite, BNSite, ReluSite, Sites, enclosing_module,
                                 find_sites, trace)

__all__ = ["BN_TYPES", "WEIGHT_TYPES", "AddSite", "BNSite", "ReluSite", "Sites", "enclosing_module", "find_sites",
           "trace"]
