"""Kaggle: single-file kernel bundles and the API calls (push, status, output, submit)."""
