"""l2o: learned optimizers, the optimizee tasks they train, and the math shared by meta-training
and analysis. See the README for the map of the packages."""

__version__ = "0.1.0"
