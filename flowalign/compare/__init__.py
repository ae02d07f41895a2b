"""``flowalign compare``: train every recipe × seed at the same budget and report held-out metrics over seeds.

plan (what to run, checked before anything runs) → runner (subprocesses, resumable) → collect (each run's
summary.json, metrics.jsonl, config.yaml) → aggregate (mean ± sample std over seeds) → render_md / render_html.
"""
