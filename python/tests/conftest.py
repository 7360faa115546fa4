"""Makes python/beephost_worker.py importable and locates the shared example frames."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.dirname(HERE)
REPO = os.path.dirname(PYTHON_DIR)
EXAMPLES = os.path.join(REPO, "tests", "protocol")

if PYTHON_DIR not in sys.path:
    sys.path.insert(0, PYTHON_DIR)
