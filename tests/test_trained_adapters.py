"""`adapters:` in a campaign: adapters trained elsewhere, keyed by their files and the base,
copied into the run directory as finished fine-tunes (no Ray, no model loaded)."""

from __future__ import annotations

import pytest

from ftsafe_ray.errors import DataError, SpecError
from ftsafe_ray.plan import build_plan
from ftsafe_ray.spec import parse_campaign
from ftsafe_ray.store import RunStore
from ftsafe_ray.trained_adapters import import_trained_adapters
from tests.fixtures.campaign_files import write_benchmark


def fake_adapter(folder, weights: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(weights)
    (folder / "README.md").write_text("a model card; not part of the key")
    return folder


def campaign(tmp_path, **extra):
    write_benchmark(tmp_path / "b.jsonl", [("malware", "placeholder request")])
    return {
        "name": "t",
        "output_dir": "run",
        "models": [{"name": "m", "path": "org/model"}, {"name": "n", "path": "org/other"}],
        "adapters": [{"name": "vendor", "path": "a", "model": "m"}],
        "benchmarks": [{"name": "b", "source": "b.jsonl"}],
        **extra,
    }


def plan_of(tmp_path, **extra):
    return build_plan(parse_campaign(campaign(tmp_path, **extra)), base_dir=tmp_path)


def test_an_adapter_is_keyed_by_its_files_and_base(tmp_path):
    fake_adapter(tmp_path / "a", b"weights-1")
    plan = plan_of(tmp_path)
    [adapter] = plan.trained_adapters
    assert [t.arm for t in plan.targets] == ["base", "vendor", "base"]  # model n: base only
    assert plan.targets[1].adapter_key == adapter.key and not plan.finetunes
    (tmp_path / "a" / "README.md").write_text("another card")
    assert plan_of(tmp_path).trained_adapters[0].key == adapter.key
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"weights-2")
    assert plan_of(tmp_path).trained_adapters[0].key != adapter.key
    every_base = campaign(tmp_path)
    every_base["adapters"][0].pop("model")
    keys = {a.key for a in build_plan(parse_campaign(every_base), tmp_path).trained_adapters}
    assert len(keys) == 2  # the same files on two bases: two keys


def test_adapter_spec_and_directory_errors(tmp_path):
    data = campaign(tmp_path)
    data["adapters"] = [{"name": "base", "path": "a"}, {"name": "x", "path": "a", "model": "z"}]
    with pytest.raises(SpecError) as error:
        parse_campaign(data)
    assert "adapters.0.name" in str(error.value) and "adapters.1.model" in str(error.value)
    with pytest.raises(DataError, match=r"adapters\.0\.path: .*no adapter_config\.json"):
        plan_of(tmp_path)


def test_import_copies_the_adapter_once_as_a_finished_finetune(tmp_path):
    fake_adapter(tmp_path / "a", b"weights")
    plan = plan_of(tmp_path)
    store = RunStore(plan.run_dir)
    assert import_trained_adapters(plan, store) == 1
    [row] = store.finetunes.rows()
    assert (
        row["status"] == "ok"
        and row["arm"] == "vendor"
        and row["key"] == plan.targets[1].adapter_key
    )
    copy = plan.run_dir / row["adapter_path"]
    assert (copy / "adapter_model.safetensors").read_bytes() == b"weights"
    assert import_trained_adapters(plan, store) == 0  # a rerun copies nothing
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"changed")
    with pytest.raises(DataError, match="changed since the campaign was planned"):
        import_trained_adapters(plan, RunStore(tmp_path / "other"))  # planned before the change
