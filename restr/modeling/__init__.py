"""ReSTR modules, one file per paper concept."""
from restr.modeling.restr import ReSTR
from restr.modeling.loss import patch_labels, restr_loss

__all__ = ["ReSTR", "patch_labels", "restr_loss"]
