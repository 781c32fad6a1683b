"""Why a model scored a row as it did: integrated gradients of every task score and of the fused score
over the pooled embeddings and the dense features (:mod:`~torchrec_fusion.explain.attributions`), split
exactly over the ids of each bag (:mod:`~torchrec_fusion.explain.bags`), each task's gate mixture over
the experts (:mod:`~torchrec_fusion.explain.experts`), the fusion's per-task contributions, and the
model-wide feature importance (:mod:`~torchrec_fusion.explain.importance`).

Every function here takes a single-process model (an export, or a checkpoint gathered by
:mod:`~torchrec_fusion.explain.run`): the world size a run trained at cannot change an explanation.
This ``__init__`` imports nothing, so that the report can draw the figures without the model code.
"""
