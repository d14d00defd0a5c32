"""Architecture search under a measured budget (see `run.py`)."""
