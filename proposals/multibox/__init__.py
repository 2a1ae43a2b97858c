"""MultiBox (Erhan et al., CVPR 2014): learned class-agnostic proposals on the GoogLeNet features."""
from proposals.multibox.model import MultiBoxNet
from proposals.multibox.proposer import MultiBoxProposer

__all__ = ["MultiBoxNet", "MultiBoxProposer"]
