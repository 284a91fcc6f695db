"""ReSTR modules, one file per paper concept."""

from restr.modeling.loss import patch_labels, restr_loss
from restr.modeling.restr import ReSTR

__all__ = ["ReSTR", "patch_labels", "restr_loss"]
