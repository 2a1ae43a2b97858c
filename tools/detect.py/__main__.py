"""`python tools/detect.py image.jpg ...`: the former name of tools/detect_images.py, run with the same arguments.

A folder, not a file: Python runs a folder by its __main__.py, while a file tools/detect.py would hide the
`detect` package from every tool in tools/ (Python puts the script's folder first on the import path).
It imports nothing of the project.
"""
import os
import sys

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "detect_images.py")
os.execv(sys.executable, [sys.executable, TOOL, *sys.argv[1:]])
