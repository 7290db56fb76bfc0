"""Predictive models fitted on features: regression (and classifiers)."""
