"""Score every pretrained op by the loss change it causes alone in the teacher (paper Eq. 3).

a_ij = cross-entropy with op j in layer i - cross-entropy of the teacher, on --samples images of
the calib split (the teacher op scores 0).  The teacher's activations before layer i are computed
once per batch and reused for every op.  Writes the scores file lana search reads:
{"schema": "lana.scores/1", "teacher", "pool", "teacher_loss", "n_samples",
 "layers": [{"name", "scores": {op_key: loss change}}, ...]} (plus teacher_top1 and per-op top1).
"""

from __future__ import annotations

import argparse

from lana.cli import command_parser

from lana.defaults import (
    SCORE_SAMPLES as DEFAULT_SAMPLES,
    SCORE_BATCH_SIZE as DEFAULT_BATCH_SIZE,
)
