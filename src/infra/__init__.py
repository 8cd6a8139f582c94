"""Plumbing every layer may use and that knows nothing of training: atomic files, masking secrets, user
errors, a project-local PostgreSQL, the MLflow server, the Ray cluster launcher, a headless browser.
"""
