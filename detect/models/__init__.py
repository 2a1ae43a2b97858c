"""Networks (``googlenet``: Inception v1, Table 1 of the paper, and its torchvision-compatible variant) and
loading weights into them (``weights``; BVLC's files are read by ``bvlc``)."""
