"""Builders of clean / corrupted prompt pairs for the paper's three tasks."""

from .gendered_pronouns import gendered_pronouns
from .greater_than import greater_than
from .ioi import ioi

TASKS = {"ioi": ioi, "gp": gendered_pronouns, "gt": greater_than}
"""Short task names (as used by the command line) to their builders."""

__all__ = ["TASKS", "gendered_pronouns", "greater_than", "ioi"]
