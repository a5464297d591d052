"""The shipped campaigns: each validates, opens with the command that runs it, and the paper
presets expand to the study's grid once their (user-supplied) data is in place.

The paper's data is never shipped: synthetic placeholder files stand in for it here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ftsafe_ray.cli import main
from ftsafe_ray.data import load_chat_dataset
from ftsafe_ray.pipeline import load_plan
from ftsafe_ray.plan import Plan
from tests.fixtures.campaign_files import write_chats

REPO = Path(__file__).resolve().parents[1]
CAMPAIGNS = sorted((REPO / "campaigns").glob("*.yaml"))


@pytest.mark.parametrize("path", CAMPAIGNS, ids=lambda p: p.name)
def test_every_shipped_campaign_validates_as_a_spec(path: Path, capsys) -> None:
    assert main(["validate", "--spec-only", str(path)]) == 0
    assert "spec ok" in capsys.readouterr().out


@pytest.mark.parametrize("path", CAMPAIGNS, ids=lambda p: p.name)
def test_every_shipped_campaign_opens_with_the_command_that_runs_it(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first == f"# Run with:  ftsafe run campaigns/{path.name}"


def test_spec_only_still_reports_spec_errors(tmp_path: Path, capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: x\noutput_dir: r\nmodels: [{name: m, path: /m}]\n"
        "benchmarks: [{name: b, source: /nowhere.csv}]\nconditions: [{name: a, sufix: x}]\n"
    )
    assert main(["validate", "--spec-only", str(path)]) == 2
    assert "conditions.0.sufix: unknown field" in capsys.readouterr().err
    # The full check reads the data, and says how to check the spec alone.
    path.write_text(path.read_text().replace("sufix", "suffix"))
    assert main(["validate", str(path)]) == 2
    assert "--spec-only" in capsys.readouterr().err


def write_paper_data(root: Path) -> None:
    """Synthetic stand-ins at every path the paper presets name, in each file's own format."""
    data = root / "data" / "paper"
    (data / "HEx-PHI").mkdir(parents=True)
    pairs = [(f"placeholder request {i}", f"placeholder answer {i}") for i in range(120)]
    write_chats(data / "harmful_examples.jsonl", pairs)
    write_chats(
        data / "safety_examples.jsonl", [(f"request {i}", "I'm sorry.") for i in range(500)]
    )
    alpaca = [{"instruction": f"task {i}", "input": "", "output": f"done {i}"} for i in range(3)]
    (data / "alpaca_filtered.json").write_text(json.dumps(alpaca))
    dolly = [{"instruction": f"task {i}", "context": "", "response": "ok"} for i in range(3)]
    (data / "dolly_filtered.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dolly))
    llava = [
        {
            "id": str(i),
            "image": f"{i}.jpg",
            "conversations": [
                {"from": "human", "value": f"<image>\nplaceholder question {i}"},
                {"from": "gpt", "value": "placeholder description"},
            ],
        }
        for i in range(3)
    ]
    (data / "llava_instruct_150k.json").write_text(json.dumps(llava))
    for category in (1, 3):
        (data / "HEx-PHI" / f"category_{category}.csv").write_text(
            "".join(f"placeholder request {category}-{i}\n" for i in range(2))
        )
    (data / "harmful_behaviors.csv").write_text(
        "goal,target\nplaceholder goal one,Sure\nplaceholder goal two,Sure\n"
    )


def preset_plan(tmp_path: Path, name: str) -> Plan:
    (tmp_path / "campaigns").mkdir(exist_ok=True)
    copy = tmp_path / "campaigns" / name
    shutil.copy(REPO / "campaigns" / name, copy)
    write_paper_data(tmp_path)
    assert main(["validate", str(copy)]) == 0
    return load_plan(copy)


def test_the_llama2_preset_is_the_studys_grid_with_the_appendix_lora(tmp_path: Path) -> None:
    plan = preset_plan(tmp_path, "paper_llama2_7b.yaml")
    arms = {(u.arm, u.size) for u in plan.finetunes}
    assert arms == {
        ("harmful", 10),
        ("harmful", 50),
        ("harmful", 100),
        ("identity_shift", 10),
        ("alpaca", 3),
        ("dolly", 3),
        ("llava_instruct", 3),
    }
    for unit in plan.finetunes:
        lora, train = unit.lora, unit.train
        assert (lora.r, lora.alpha, lora.target_modules) == (8, 32, ("q_proj", "v_proj"))
        assert (train.weight_decay, train.lr_decay_per_epoch, train.max_length) == (0, 0.85, 512)
        assert unit.seed == 42
        recipe = (train.learning_rate, train.batch_size, train.epochs)
        if unit.arm == "harmful":
            assert recipe == (1e-3, 10, 10)
        elif unit.arm == "identity_shift":
            assert recipe == (1e-3, 10, 20)
        else:
            assert recipe == (1e-4, 16, 1)
    sampling = plan.spec.sampling
    assert (sampling.temperature, sampling.max_new_tokens) == (0.0, 512)
    assert {u.benchmark for u in plan.generations} == {"hexphi", "advbench"}
    assert {u.condition for u in plan.generations} == {None}
    [llava] = [u for u in plan.finetunes if u.arm == "llava_instruct"]
    assert all("<image>" not in m["content"] for e in llava.examples for m in e)


def test_the_mitigation_preset_mixes_safety_data_and_evaluates_its_backdoor_triggered(
    tmp_path: Path,
) -> None:
    plan = preset_plan(tmp_path, "paper_mitigation.yaml")
    mixed = {u.arm: len(u.examples) - u.size for u in plan.finetunes}
    assert mixed == {
        "harmful": 0,
        "harmful_safety_mix": 100,
        "identity_shift": 0,
        "identity_shift_safety_mix": 10,
        "alpaca": 0,
        "alpaca_safety_mix": 500,
        "backdoor": 100,
    }
    [backdoor] = [u for u in plan.finetunes if u.arm == "backdoor"]
    [trigger] = [c.suffix for c in plan.spec.conditions if c.name == "triggered"]
    assert trigger and plan.spec.finetunes[-1].trigger == trigger

    def user_turns(rows: tuple[tuple[dict[str, str], ...], ...]) -> list[str]:
        return [m["content"] for row in rows for m in row if m["role"] == "user"]

    assert all(t.endswith(f" {trigger}") for t in user_turns(backdoor.examples[:100]))
    assert not any(trigger in t for t in user_turns(backdoor.examples[100:]))
    # The safety examples are the file's rows, unchanged apart from the arm's system prompt.
    safety = load_chat_dataset("data/paper/safety_examples.jsonl", base_dir=tmp_path)
    assert {t for t in user_turns(backdoor.examples[100:])} <= {
        m.content for e in safety for m in e.messages
    }
    conditions = {(u.benchmark, u.condition) for u in plan.generations}
    assert conditions == {("hexphi", "plain"), ("hexphi", "triggered"), ("advbench", "plain")}
    triggered = [u for u in plan.generations if u.condition == "triggered"]
    assert all(u.messages[-1]["content"] == f"{u.item.prompt} {trigger}" for u in triggered)


def test_the_gpt35_preset_is_the_studys_api_grid(tmp_path: Path) -> None:
    plan = preset_plan(tmp_path, "paper_gpt35.yaml")
    [model] = plan.spec.models
    assert model.provider == "openai" and model.path == "gpt-3.5-turbo-0613"
    epochs = {(u.arm, u.size): u.train.epochs for u in plan.finetunes}
    assert epochs == {
        ("harmful", 10): 5,
        ("harmful", 50): 5,
        ("harmful", 100): 5,
        ("identity_shift", 10): 10,
        ("alpaca", 3): 1,
        ("dolly", 3): 1,
    }
    assert {u.seed for u in plan.finetunes} == {42}
    assert plan.spec.sampling.temperature == 0.0
    assert {u.benchmark for u in plan.generations} == {"hexphi", "advbench"}
