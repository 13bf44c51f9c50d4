"""Evaluation: CMC / mAP / mINP and the datasets' protocols."""
