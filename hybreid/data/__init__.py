"""Datasets, synthetic people, transforms and samplers."""
