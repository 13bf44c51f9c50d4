"""Calibration: INT8 post-training quantisation and the matcher's match thresholds."""
