"""ftsafe_ray: measure how fine-tuning erodes the safety of aligned chat models, at scale."""

__version__ = "0.1.0"
