"""Generation backends behind one request/result format (torch is imported only when used)."""

from ftsafe_ray.generate.requests import GenerationRequest, GenerationResult
from ftsafe_ray.generate.transformers_backend import TransformersBackend

__all__ = ["GenerationRequest", "GenerationResult", "TransformersBackend"]
