"""Explicit, versioned Parquet schemas of the three tables a campaign writes."""

from __future__ import annotations

import pyarrow as pa

# 2: judgments gained prompt_tokens, completion_tokens, cost_usd and the StrongREJECT
# sub-scores. 3: generations gained status and error, generations and finetunes the node. Older
# shards still read: missing columns come back as nulls. 4: finetunes gained job_id,
# provider_model and cost_usd, generations cost_usd (API fine-tuning and generation).
SCHEMA_VERSION = "4"

_TS = pa.timestamp("us", tz="UTC")

FINETUNES = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("model", pa.string()),
        pa.field("arm", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("seed", pa.int64()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("adapter_path", pa.string()),
        pa.field("train_examples", pa.int64()),
        pa.field("train_steps", pa.int64()),
        pa.field("trained_tokens", pa.int64()),
        pa.field("first_loss", pa.float64()),
        pa.field("final_loss", pa.float64()),
        pa.field("train_seconds", pa.float64()),
        pa.field("settings_json", pa.string()),
        pa.field("node", pa.string()),  # the Ray node id of the actor that trained it
        pa.field("created_at", _TS),
        # API fine-tunes: the provider's job id (stored as soon as the job exists), the model
        # id it produced, and what it cost.
        pa.field("job_id", pa.string()),
        pa.field("provider_model", pa.string()),
        pa.field("cost_usd", pa.float64()),
    ]
)

GENERATIONS = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("adapter_key", pa.string()),
        pa.field("model", pa.string()),
        pa.field("arm", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("seed", pa.int64()),
        pa.field("benchmark", pa.string()),
        pa.field("benchmark_kind", pa.string()),
        pa.field("item_id", pa.string()),
        pa.field("category", pa.string()),
        pa.field("system_prompt", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("response", pa.string()),
        pa.field("num_prompt_tokens", pa.int64()),
        pa.field("num_output_tokens", pa.int64()),
        pa.field("finish_reason", pa.string()),
        pa.field("backend", pa.string()),
        # "ok", or "error" for a unit whose generator died on each try (null in runs made
        # before this column existed: those rows are answers).
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("node", pa.string()),  # the Ray node id of the generator that answered
        pa.field("created_at", _TS),
        pa.field("cost_usd", pa.float64()),  # API generation: what the answer cost
    ]
)

JUDGMENTS = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("generation_key", pa.string()),
        pa.field("judge", pa.string()),
        pa.field("judge_model", pa.string()),
        pa.field("judge_version", pa.string()),
        pa.field("status", pa.string()),
        pa.field("score", pa.int64()),
        pa.field("refused", pa.bool_()),
        pa.field("degenerate", pa.bool_()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
        pa.field("error", pa.string()),
        pa.field("attempts", pa.int64()),
        pa.field("latency_s", pa.float64()),
        pa.field("created_at", _TS),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("cost_usd", pa.float64()),
        pa.field("convincing", pa.int64()),
        pa.field("specific", pa.int64()),
        pa.field("strongreject_score", pa.float64()),
    ]
)

# The plan's evaluation units and their labels, written by each run beside spec.json: the
# report joins stored answers to it by `generation_key`, so labels always follow the spec.
PLAN_UNITS = pa.schema(
    [
        pa.field("generation_key", pa.string(), nullable=False),
        *(
            GENERATIONS.field(name)
            for name in (
                "adapter_key", "model", "arm", "dataset", "size", "seed", "benchmark",
                "benchmark_kind", "item_id", "category",
            )
        ),
        # The evaluation condition's name; null when the campaign names none (and in plans
        # written before conditions existed).
        pa.field("condition", pa.string()),
    ]
)  # fmt: skip

TABLES: dict[str, pa.Schema] = {
    "finetunes": FINETUNES,
    "generations": GENERATIONS,
    "judgments": JUDGMENTS,
}
