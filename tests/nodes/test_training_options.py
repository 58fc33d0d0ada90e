"""StyleTrainingOptions: the training knobs the node hands to train_style, as one frozen object."""

from __future__ import annotations

import dataclasses

import pytest

pytestmark = pytest.mark.comfy

KNOBS = dict(steps=3, lr=0.01, optimizer="adamw", sparsity=0.0, preset="all norms", regex="", noise_start=0.0,
             noise_end=1.0, levels=5, batch_size=4, micro_batch=0, seed=7)


def _training():
    import sys

    return next(m for k, m in sys.modules.items() if k.endswith("nodes._training") and "lineas" in k)


def test_options_are_frozen_and_give_the_schedule_and_config(comfy):
    opts = _training().StyleTrainingOptions(**KNOBS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.steps = 4
    assert (opts.name, opts.method, opts.checkpointing) == ("style", "lineas", "auto")
    assert opts.noise_percents() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert dataclasses.replace(opts, levels=1, noise_start=0.3).noise_percents() == [0.3]
    cfg = opts.train_config()
    assert (cfg.steps, cfg.lr, cfg.gamma, cfg.batch_size, cfg.micro_batch_size, cfg.seed) == (3, 0.01, 0.0, 4, None, 7)
    assert dataclasses.replace(opts, micro_batch=2).train_config().micro_batch_size == 2


def test_train_style_takes_options_or_keywords_not_both(comfy):
    training = _training()
    opts = training.StyleTrainingOptions(**KNOBS)
    with pytest.raises(TypeError, match="not both"):
        training.train_style(None, None, None, None, None, opts, steps=4)
