"""Score fusion: normalisation, rank aggregation, decision-level fusion and trainable fusion modules."""

from torchrec_fusion.fusion.decision import cascade, majority_vote, votes, weighted_vote
from torchrec_fusion.fusion.head import TRAINABLE_FUSIONS, FusionHead
from torchrec_fusion.fusion.normalize import METHODS, ScoreNormalizer, check_scores, normalize, percentile
from torchrec_fusion.fusion.rank_aggregation import (
    RANK_FUSIONS,
    RankFusion,
    aggregate,
    aggregate_lists,
    borda,
    combanz,
    combmax,
    combmed,
    combmin,
    combmnz,
    combsum,
    fuse,
    ranks,
    rrf,
    stack_scores,
)
from torchrec_fusion.fusion.score import FittedWeights, GatedFusion, StackingFusion, WeightedFusion, fit_weights
from torchrec_fusion.fusion.trainable import TrainableFusion

__all__ = ["METHODS", "RANK_FUSIONS", "TRAINABLE_FUSIONS", "FittedWeights", "FusionHead", "GatedFusion", "RankFusion",
           "ScoreNormalizer", "StackingFusion", "TrainableFusion", "WeightedFusion", "aggregate", "aggregate_lists",
           "borda", "cascade", "check_scores", "combanz", "combmax", "combmed", "combmin", "combmnz", "combsum",
           "fit_weights", "fuse", "majority_vote", "normalize", "percentile", "ranks", "rrf", "stack_scores", "votes",
           "weighted_vote"]
