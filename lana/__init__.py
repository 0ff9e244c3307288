"""LANA: latency-aware network acceleration.

Replace a trained network's slow layers with fast candidate ops, distilled layer by layer from the
network itself, chosen by an integer program under a latency budget measured on the target device.
"""

__version__ = "0.1.0"
