"""MultiBox (Erhan et al., CVPR 2014): learned class-agnostic proposals on the GoogLeNet features.

priors.py (k-means priors), loss.py (matching loss), model.py (network, pre-processing, decoding),
data.py (training data and augmentation), training.py (engine loss, coverage), proposer.py (inference).
"""
from proposals.multibox.model import MultiBoxNet
from proposals.multibox.proposer import MultiBoxProposer

__all__ = ["MultiBoxNet", "MultiBoxProposer"]
