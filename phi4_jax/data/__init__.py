"""Training data: Table-5 sources, the mixture planner and the grain pipeline.

The trainer calls `make_train_iterator(config, process_index, process_count)`; `check_config`
checks a stage's config.data without reading its files. `stage_format(config.data.sources)` says
which rows a stage's iterator yields: "text" (pretraining) and "chat" (SFT) give ROW_FIELDS,
"pairs" (DPO) gives PAIR_ROW_FIELDS.
"""

from phi4_jax.data.chat import tokenize_conversation
from phi4_jax.data.check import check_config, stage_format
from phi4_jax.data.packing import ROW_FIELDS
from phi4_jax.data.pairs import PAIR_ROW_DTYPES, PAIR_ROW_FIELDS, pair_id, split_pair_ids
from phi4_jax.data.pipeline import (PairIterator, TrainIterator, make_train_iterator,
                                    progress_from_state)
from phi4_jax.data.planner import PlanError
from phi4_jax.data.formats import CacheError
from phi4_jax.data.sources import SourceError

__all__ = ["CacheError", "PAIR_ROW_DTYPES", "PAIR_ROW_FIELDS", "PairIterator", "PlanError",
           "ROW_FIELDS", "SourceError", "TrainIterator", "check_config", "make_train_iterator", "pair_id", "progress_from_state", "split_pair_ids",
           "stage_format", "tokenize_conversation"]
