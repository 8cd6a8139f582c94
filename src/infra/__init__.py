"""Plumbing every layer may use and that knows nothing of training: atomic files and strict JSON, masking
secrets, user errors and entry points, number predicates, loopback hosts, a project-local PostgreSQL, the Ray
cluster launcher's pre-flight (the launcher itself is hydra_plugins/ray_cluster_launcher.py) and a headless
browser.
"""
