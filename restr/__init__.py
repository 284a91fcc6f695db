"""restr: ReSTR referring image segmentation, from PyTorch training to production inference.

Importing `restr` does not import torch: `restr.runtime` must work in torch-free deployments.
"""

__version__ = "0.1.0"
