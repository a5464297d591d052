"""Chat datasets, evaluation benchmarks and built-in demo data for ftsafe_ray."""

from ftsafe_ray.data.categories import (
    CATEGORY_SLUGS,
    HEX_PHI_CATEGORIES,
    category_slug,
    category_title,
)
from ftsafe_ray.data.loaders import (
    BENCHMARK_BUILTINS,
    BENCHMARK_FORMATS,
    CHAT_BUILTINS,
    CHAT_FORMATS,
    builtin_names,
    builtin_resource,
    dataset_fingerprint,
    load_benchmark,
    load_chat_dataset,
)
from ftsafe_ray.data.records import BenchmarkItem, ChatExample, Message

__all__ = [
    "BENCHMARK_BUILTINS",
    "BENCHMARK_FORMATS",
    "CATEGORY_SLUGS",
    "CHAT_BUILTINS",
    "CHAT_FORMATS",
    "HEX_PHI_CATEGORIES",
    "BenchmarkItem",
    "ChatExample",
    "Message",
    "builtin_names",
    "builtin_resource",
    "category_slug",
    "category_title",
    "dataset_fingerprint",
    "load_benchmark",
    "load_chat_dataset",
]
