"""Candidate boxes: selective search (superpixel scale as a parameter), MultiBox, and their union."""
