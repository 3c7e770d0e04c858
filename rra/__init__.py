"""rra: Representational Response Analysis of convolutional networks."""

__version__ = "0.1.0"
