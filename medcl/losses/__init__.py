"""Contrastive losses: one kernel (:mod:`.ntxent`) and Chaitanya et al.'s global and local losses."""

from medcl.losses.global_contrast import GLOBAL_STRATEGIES, GlobalContrastiveLoss, GlobalStrategy
from medcl.losses.local_contrast import (
    LOCAL_NEGATIVES,
    LOCAL_STRATEGIES,
    REGION_LAYOUTS,
    LocalContrastiveLoss,
    LocalNegatives,
    LocalStrategy,
    RegionLayout,
)
from medcl.losses.ntxent import (
    contrastive_loss,
    gather,
    gather_with_grad,
    masked_logsumexp,
    masks_from_ids,
    pair_loss,
    rank_self_mask,
    same_id,
    self_pairs,
)

__all__ = [
    "GLOBAL_STRATEGIES",
    "LOCAL_NEGATIVES",
    "LOCAL_STRATEGIES",
    "REGION_LAYOUTS",
    "GlobalContrastiveLoss",
    "GlobalStrategy",
    "LocalContrastiveLoss",
    "LocalNegatives",
    "LocalStrategy",
    "RegionLayout",
    "contrastive_loss",
    "gather",
    "gather_with_grad",
    "masked_logsumexp",
    "masks_from_ids",
    "pair_loss",
    "rank_self_mask",
    "same_id",
    "self_pairs",
]
