"""MultiBox (Erhan et al., CVPR 2014): learned class-agnostic proposals on the GoogLeNet features.

priors.py (k-means priors), loss.py (matching loss), model.py (network, pre-processing, decoding),
data.py (training data and augmentation), training.py (engine loss, coverage), proposer.py (inference).
"""
from proposals.multibox.loss import multibox_loss
from proposals.multibox.model import MultiBoxNet
from proposals.multibox.priors import compute_priors, normalised_boxes
from proposals.multibox.proposer import MultiBoxProposer, load_multibox

__all__ = ["compute_priors", "normalised_boxes", "multibox_loss", "MultiBoxNet", "MultiBoxProposer", "load_multibox"]
