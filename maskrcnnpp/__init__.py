"""Mask R-CNN++: UNet++-style dense nested feature pyramids for detectron2, for nuclei.

Importing the package registers its datasets, backbones, meta-architectures and evaluators
in detectron2's catalogs and registries.
"""
import warnings

import torch

from .machine import MIN_TORCH, version_tuple

if version_tuple(torch.__version__) < MIN_TORCH:
    raise ImportError(
        f"Mask R-CNN++ needs torch >= {'.'.join(map(str, MIN_TORCH))}, but this Python has torch "
        f"{torch.__version__}. Upgrade it (bash scripts/install.sh names the command), then retry."
    )

# fvcore scripts its focal loss when detectron2 imports it, the neck declares a TorchScript
# interface (for export), and torch >= 2.10 warns that torch.jit.script and torch.jit.interface are
# deprecated: warnings at import that users cannot act on, which would otherwise open every tool's
# output (and stand above its one-line errors).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.(script|interface)` is deprecated",
                            category=FutureWarning)
    from . import data  # noqa: E402,F401  (registers the nuclei datasets)
    from . import modeling  # noqa: E402,F401  (registers the dense backbones and meta-architecture)
    from . import model_zoo  # noqa: E402,F401
    from .config import add_maskrcnnpp_config  # noqa: E402

__all__ = ["add_maskrcnnpp_config", "model_zoo"]
