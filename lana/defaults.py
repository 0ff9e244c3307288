"""Default settings of the training stages, in a module that imports nothing heavy.

The stage modules (:mod:`lana.pretrain`, :mod:`lana.score`, :mod:`lana.select`,
:mod:`lana.finetune`) and their command-line parsers both read them from here, so that building the
parser (``lana --help``) does not import torch.
"""

PRETRAIN_EPOCHS = 1
PRETRAIN_BATCH_SIZE = 16
PRETRAIN_LR = 1e-2

SCORE_SAMPLES = 256
SCORE_BATCH_SIZE = 250

SELECT_IMAGES = 6000
SELECT_BATCH_SIZE = 128

FINETUNE_EPOCHS = 20
FINETUNE_BATCH_SIZE = 64
FINETUNE_LR = 1e-3
FINETUNE_TEMPERATURE = 4.0
FINETUNE_KD_WEIGHT = 0.7
