"""GoogLeNet detection (ILSVRC 2014, Szegedy et al. section 8): region classifier, pipeline, evaluation."""
import os as _os

# Idle OpenMP threads (torch's CPU ops) sleep instead of spinning: on cores shared with other jobs the
# spinning threads made tools/train_cls.py 10x slower at 2 threads than at 1; with passive waiting 2 threads
# beat 1 (benchmarks/threads.md). libgomp reads this when torch loads it, so it is set here, before any
# module of ours imports torch (the tools import `detect` first); a value of the user's is left alone.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
