"""Networks: GoogLeNet (Inception v1, Table 1 of the paper) and its torchvision-compatible variant."""
from detect.models import googlenet
from detect.models.googlenet import *  # noqa: F401,F403 - the public names listed in googlenet.__all__

__all__ = list(googlenet.__all__)
