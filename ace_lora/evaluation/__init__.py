"""Evaluation: zero-shot engine, metrics with confidence intervals, figures."""
