"""Cohorts and how they are divided: manifests and their validation, the MSLUB sample, splits, the leakage audit."""
