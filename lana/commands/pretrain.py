"""Distil every candidate op of a pool from its teacher layer (layer-wise MSE, paper Eq. 2).

One no-grad teacher forward feeds all layers; several ops per layer train on the same features
(--ops-per-pass, default all), so the whole pool costs about M / ops-per-pass passes of --epochs
epochs.  Writes one checkpoint per (layer, op) under OUT and OUT/pretrain.json; an interrupted run
continues with --resume.  Run several processes with torchrun --nproc_per_node N -m lana pretrain
...: the (layer, op) problems are split between them by cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from lana.cli import command_parser

from lana.defaults import (
    PRETRAIN_EPOCHS as DEFAULT_EPOCHS,
    PRETRAIN_BATCH_SIZE as DEFAULT_BATCH_SIZE,
    PRETRAIN_LR as DEFAULT_LR,
)
