"""snn-suite: train and compare spiking-network learning rules against conventional CNNs."""

__version__ = "0.1.0"
