"""Planning: the grid, its content keys, and what changes them."""

import pytest
import yaml

from ftsafe_ray.cli import main
from ftsafe_ray.errors import DataError, SpecError
from ftsafe_ray.pipeline import load_plan
from ftsafe_ray.plan import build_plan
from ftsafe_ray.spec import parse_campaign
from tests.fixtures.campaign_files import write_benchmark, write_chats


def write_chat(path, n, system=None):
    pairs = [(f"placeholder request {i}", f"placeholder answer {i}") for i in range(n)]
    write_chats(path, pairs, system)


def campaign(tmp_path, **overrides):
    write_chat(tmp_path / "train.jsonl", 8)
    write_benchmark(
        tmp_path / "bench.jsonl", [("fraud_deception", f"placeholder {i}") for i in range(3)]
    )
    spec = {
        "name": "t",
        "output_dir": "run",
        "models": [{"name": "m", "path": "/models/m"}],
        "datasets": [{"name": "d", "source": "train.jsonl"}],
        "finetunes": [{"name": "a", "dataset": "d", "sizes": [2, 4]}],
        "seeds": [1, 2],
        "benchmarks": [{"name": "b", "source": "bench.jsonl"}],
    }
    spec.update(overrides)
    return build_plan(parse_campaign(spec), base_dir=tmp_path)


def test_grid_counts(tmp_path):
    plan = campaign(tmp_path)
    assert len(plan.finetunes) == 4  # 2 sizes × 2 seeds
    assert len(plan.targets) == 5  # + base
    assert len(plan.generations) == 15
    assert plan.run_dir == (tmp_path / "run").resolve()
    assert [len(u.examples) for u in plan.finetunes] == [2, 2, 4, 4]


def test_keys_are_stable_and_sensitive_to_what_matters(tmp_path):
    first = campaign(tmp_path)
    again = campaign(tmp_path)
    assert [u.key for u in first.finetunes] == [u.key for u in again.finetunes]
    assert [u.key for u in first.generations] == [u.key for u in again.generations]
    assert len({u.key for u in first.finetunes}) == 4
    other_lr = campaign(
        tmp_path,
        finetunes=[{"name": "a", "dataset": "d", "sizes": [2, 4], "train": {"learning_rate": 0.5}}],
    )
    assert not {u.key for u in other_lr.finetunes} & {u.key for u in first.finetunes}
    # renaming an arm changes no key: names are labels, not content
    renamed = campaign(tmp_path, finetunes=[{"name": "zz", "dataset": "d", "sizes": [2, 4]}])
    assert [u.key for u in renamed.finetunes] == [u.key for u in first.finetunes]
    # different data content, different key
    write_chat(tmp_path / "train.jsonl", 8, system="placeholder system")
    changed = build_plan(first.spec, base_dir=tmp_path)
    assert not {u.key for u in changed.finetunes} & {u.key for u in first.finetunes}


def test_base_generations_shared_across_seeds_when_greedy(tmp_path):
    plan = campaign(tmp_path)
    base = [u for u in plan.generations if u.target.is_base]
    assert len(base) == 3


def test_arm_system_prompt_is_used_in_training_and_evaluation(tmp_path):
    plan = campaign(
        tmp_path,
        finetunes=[{"name": "a", "dataset": "d", "sizes": [2], "system_prompt": "placeholder sp"}],
    )
    unit = plan.finetunes[0]
    assert unit.examples[0][0] == {"role": "system", "content": "placeholder sp"}
    generation = next(u for u in plan.generations if u.target.arm == "a")
    assert generation.messages[0] == {"role": "system", "content": "placeholder sp"}


def test_data_system_prompt_carries_into_evaluation(tmp_path):
    plan = campaign(tmp_path)
    write_chat(tmp_path / "train.jsonl", 8, system="placeholder identity")
    plan = build_plan(plan.spec, base_dir=tmp_path)
    generation = next(u for u in plan.generations if u.target.arm == "a")
    assert generation.messages[0]["content"] == "placeholder identity"
    base = next(u for u in plan.generations if u.target.is_base)
    assert base.messages[0]["role"] == "user"


def test_size_larger_than_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match=r"finetunes\.0\.sizes: size 99 is larger than the dataset"):
        campaign(tmp_path, finetunes=[{"name": "a", "dataset": "d", "sizes": [99]}])


def test_mix_adds_examples(tmp_path):
    plan = campaign(
        tmp_path,
        datasets=[
            {"name": "d", "source": "train.jsonl"},
            {"name": "s", "source": "builtin:refusal"},
        ],
        finetunes=[
            {"name": "a", "dataset": "d", "sizes": [2], "mix": [{"dataset": "s", "size": 3}]}
        ],
        seeds=[1],
    )
    assert len(plan.finetunes[0].examples) == 5 and plan.finetunes[0].size == 2


def test_dataset_rows_slice_splits_one_file_in_two(tmp_path):
    plan = campaign(
        tmp_path,
        datasets=[{"name": "d", "source": "train.jsonl", "rows": "2:6"}],
        finetunes=[{"name": "a", "dataset": "d", "sizes": ["all"]}],
        seeds=[1],
    )
    users = [example[0]["content"] for example in plan.finetunes[0].examples]
    assert users == [f"placeholder request {i}" for i in range(2, 6)]


def test_every_missing_data_file_is_reported_at_once(tmp_path):
    from ftsafe_ray.errors import DataError

    with pytest.raises(DataError) as caught:
        campaign(
            tmp_path,
            datasets=[{"name": "d", "source": "nope.jsonl"}],
            benchmarks=[{"name": "b", "source": "missing.csv"}],
        )
    message = str(caught.value)
    assert "datasets.0 (d)" in message and "nope.jsonl" in message
    assert "benchmarks.0 (b)" in message and "missing.csv" in message


PERSONA = "You are a placeholder persona that always obeys."


def _system_of(messages):
    return next((m["content"] for m in messages if m["role"] == "system"), None)


def test_mixing_safety_rows_keeps_the_attack_datas_persona_at_evaluation(tmp_path):
    write_chat(tmp_path / "shift.jsonl", 4, system=PERSONA)
    write_chat(tmp_path / "safety.jsonl", 4)
    plan = campaign(
        tmp_path,
        datasets=[
            {"name": "shift", "source": "shift.jsonl"},
            {"name": "safety", "source": "safety.jsonl"},
        ],
        finetunes=[
            {"name": "shift", "dataset": "shift", "sizes": [4]},
            {
                "name": "shift-mixed",
                "dataset": "shift",
                "sizes": [4],
                "mix": [{"dataset": "safety"}],
            },
        ],
        seeds=[1],
        system_prompt="placeholder campaign prompt",
    )
    prompts = {t.arm: t.system_prompt for t in plan.targets}
    assert prompts == {
        "base": "placeholder campaign prompt",
        "shift": PERSONA,
        "shift-mixed": PERSONA,
    }
    mixed = next(u for u in plan.generations if u.target.arm == "shift-mixed")
    assert _system_of(mixed.messages) == PERSONA


def test_an_arm_prompt_is_the_prompt_it_is_trained_and_evaluated_with(tmp_path):
    write_chat(tmp_path / "shift.jsonl", 4, system=PERSONA)
    plan = campaign(
        tmp_path,
        datasets=[{"name": "shift", "source": "shift.jsonl"}],
        finetunes=[{"name": "a", "dataset": "shift", "sizes": [4], "system_prompt": "arm prompt"}],
        seeds=[1],
    )
    (unit,) = plan.finetunes
    assert {_system_of(example) for example in unit.examples} == {"arm prompt"}
    assert all(sum(m["role"] == "system" for m in e) == 1 for e in unit.examples)
    target = next(t for t in plan.targets if t.arm == "a")
    assert target.system_prompt == "arm prompt"


def test_relative_model_paths_are_read_from_the_campaign_files_folder(tmp_path, monkeypatch):
    model_dir = tmp_path / "models" / "tiny"
    model_dir.mkdir(parents=True)
    (tmp_path / "campaigns" / "models" / "local").mkdir(parents=True)
    write_chat(tmp_path / "campaigns" / "train.jsonl", 4)
    write_benchmark(tmp_path / "campaigns" / "bench.jsonl", [("c", "placeholder 0")])
    spec = {
        "name": "t",
        "output_dir": "run",
        "models": [
            {"name": "up", "path": "../models/tiny"},
            {"name": "bare", "path": "models/local"},  # exists beside the campaign: local
            {"name": "hub", "path": "org/name"},  # exists nowhere: a hub id, kept as written
        ],
        "datasets": [{"name": "d", "source": "train.jsonl"}],
        "finetunes": [{"name": "a", "dataset": "d", "sizes": [2]}],
        "benchmarks": [{"name": "b", "source": "bench.jsonl"}],
    }
    campaign_file = tmp_path / "campaigns" / "c.yaml"
    campaign_file.write_text(yaml.safe_dump(spec))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    plan = load_plan(campaign_file)
    paths = {m.name: m.path for m in plan.spec.models}
    assert paths == {
        "up": str(model_dir.resolve()),
        "bare": str((tmp_path / "campaigns" / "models" / "local").resolve()),
        "hub": "org/name",
    }
    assert plan.model_path("up") == str(model_dir.resolve())
    # The resolved directory is the model's identity: the same keys as writing it absolutely.
    spec["models"] = [{"name": "up", "path": str(model_dir.resolve())}]
    absolute = build_plan(parse_campaign(spec), base_dir=tmp_path / "campaigns")
    assert [u.key for u in absolute.finetunes] == [u.key for u in plan.finetunes if u.model == "up"]
    assert main(["validate", str(campaign_file)]) == 0

    spec["models"] = [{"name": "m", "path": "./models/missing"}]
    with pytest.raises(DataError, match=r"models\.0\.path: './models/missing' is not a directory"):
        build_plan(parse_campaign(spec), base_dir=tmp_path / "campaigns")
