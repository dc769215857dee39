"""unistad-edu: unified (multi-class) unsupervised visual anomaly detection, for teaching and exploring."""
__version__ = "0.1.0"
