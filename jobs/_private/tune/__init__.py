"""The tuning job's parts (``python -m jobs.tune`` composes them).

- ``context``: what every trial shares (``TrialContext``) and the keys a trial reports;
- ``trial``: one trial, a driver function fitting a Ray Train run and reporting to Tune;
- ``pbt``: population based training's plumbing (checkpoints to Tune, restarts from one);
- ``tuner``: the Tuner (scheduler, search, callbacks) for a new or a resumed experiment;
- ``tracking``: the MLflow runs (experiment and trials), the saved spec, the best trial's
  registration;
- ``report``: the summary table (CSV, Markdown) and the curves (PNG).
"""
