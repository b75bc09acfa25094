"""Extra evaluation on top of RecBole's evaluator: long-tail user and item groups."""
from recbole_llm.evaluation.longtail import (
    GROUPS,
    LongTailGroups,
    evaluate_longtail,
    group_metrics,
    long_tail_groups,
    longtail_enabled,
)

__all__ = ["GROUPS", "LongTailGroups", "evaluate_longtail", "group_metrics", "long_tail_groups", "longtail_enabled"]
