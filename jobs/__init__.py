"""Jobs: entrypoints run as ``python -m jobs.<name>`` (each module's docstring shows its
``ray job submit`` line), and the training engine they share.

Entrypoints: ``ingest``, ``train`` (``--from`` fine-tunes), ``tune``, ``compress``,
``evaluate``, ``release``, ``ensemble``, ``export``, ``batch_predict``, and ``pipeline``
(ingest to release as one job). Typed
configurations and their presets live in ``jobs.configs``.

The names below are the public surface of the training engine and of the tuning job's
parts (for benchmarks and other packages above this one); they load on first use, so that
importing a job's config does not import DeepSpeed and Ray Train.
"""

from __future__ import annotations

import importlib

# public name -> (module, attribute)
_EXPORTS = {
    "deepspeed_config": ("jobs._private.deepspeed_setup", "deepspeed_config"),
    "initialize_deepspeed": ("jobs._private.deepspeed_setup", "initialize"),
    "train_datasets": ("jobs._private.trainer", "datasets"),
    "make_trainer": ("jobs._private.trainer", "make_trainer"),
    "fit": ("jobs._private.trainer", "fit"),
    "load_model": ("jobs._private.trainer", "load_model"),
    "save_checkpoint_shard": ("jobs._private.checkpoints", "save_shard"),
    "load_checkpoint_shards": ("jobs._private.checkpoints", "load_shards"),
    "verify_checkpoint": ("jobs._private.checkpoints", "verify"),
    # tuning: what a benchmark (bench.asha_vs_random) needs to run jobs.tune's experiments
    "TUNE_EPOCHS_DONE": ("jobs._private.tune.context", "EPOCHS"),
    "TUNE_EXPERIMENT_TAG": ("jobs._private.tune.tracking", "EXPERIMENT_TAG"),
    "TUNE_TRIAL_TAG": ("jobs._private.tune.tracking", "TRIAL_TAG"),
    "TrialContext": ("jobs._private.tune.context", "TrialContext"),
    "max_concurrent_trials": ("jobs._private.tune.tuner", "max_concurrent"),
    "new_tuner": ("jobs._private.tune.tuner", "new_tuner"),
    "start_experiment": ("jobs._private.tune.tracking", "start_experiment"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'jobs' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), attribute)
