"""GoogLeNet detection (ILSVRC 2014, Szegedy et al. section 8): region classifier, pipeline, evaluation."""

__version__ = "0.1.0"
