"""Make the example importable when it is tested from a checkout without being installed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
