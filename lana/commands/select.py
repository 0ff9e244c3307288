"""Evaluate the K architectures of a search result with their pretrained ops; keep the best.

Each architecture is assembled from its distilled ops and run on --images training images with
batch norm in batch-statistics mode (paper §2.2); the lowest cross-entropy wins.  Prints the
ranking and writes the winner as an architecture file (lana.arch/1) with a "selection" record.
--search also accepts a single architecture file.
"""

from __future__ import annotations

import argparse

from lana.cli import command_parser

from lana.defaults import (
    SELECT_IMAGES as DEFAULT_IMAGES,
    SELECT_BATCH_SIZE as DEFAULT_BATCH_SIZE,
)
