"""hwnas: hardware-aware neural architecture search for mobile deployment."""

__version__ = "0.1.0"
