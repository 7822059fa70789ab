"""Figures: each function takes data and returns a matplotlib Figure."""
