"""Fine-tune the selected architecture with cross-entropy plus distillation from the teacher.

Starts from the pretrained ops (teacher layers from the teacher); loss (1 - a) * CE + a * T^2 *
KL(teacher || student) at temperature T, AdamW with a cosine schedule.  Reports validation top-1
after every epoch and checkpoints atomically, so --resume continues an interrupted run.  Writes
OUT/student.pt (architecture + state_dict) and OUT/metrics.json (val top-1 per epoch, final,
teacher top-1).  torchrun --nproc_per_node N -m lana finetune ... trains data-parallel (DDP).
"""

from __future__ import annotations

import argparse

from lana.cli import command_parser

from lana.defaults import (
    FINETUNE_EPOCHS as DEFAULT_EPOCHS,
    FINETUNE_BATCH_SIZE as DEFAULT_BATCH_SIZE,
    FINETUNE_LR as DEFAULT_LR,
    FINETUNE_TEMPERATURE as DEFAULT_TEMPERATURE,
    FINETUNE_KD_WEIGHT as DEFAULT_KD_WEIGHT,
)
