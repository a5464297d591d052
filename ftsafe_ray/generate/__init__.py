"""Generation backends behind one request/result format (torch and vllm load only when used)."""

from ftsafe_ray.generate.requests import GenerationRequest, GenerationResult
from ftsafe_ray.generate.transformers_backend import TransformersBackend
from ftsafe_ray.generate.vllm_backend import VllmBackend

__all__ = ["GenerationRequest", "GenerationResult", "TransformersBackend", "VllmBackend"]
