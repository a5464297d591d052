"""The campaign spec: valid files load, bad ones fail with every problem at once."""

from pathlib import Path

import pytest
import yaml

from ftsafe_ray.errors import SpecError
from ftsafe_ray.spec import load_campaign, parse_campaign

REPO = Path(__file__).resolve().parents[1]


def minimal(**overrides):
    spec = {
        "name": "t",
        "output_dir": "runs/t",
        "models": [{"name": "m", "path": "/models/m"}],
        "datasets": [{"name": "d", "source": "builtin:benign"}],
        "finetunes": [{"name": "a", "dataset": "d", "sizes": [4]}],
        "benchmarks": [{"name": "b", "source": "builtin:demo_harmful"}],
    }
    spec.update(overrides)
    return spec


def test_minimal_spec_gets_the_papers_defaults():
    spec = parse_campaign(minimal())
    assert spec.finetunes[0].lora.r == 8 and spec.finetunes[0].lora.alpha == 32
    assert spec.finetunes[0].train.lr_decay_per_epoch == 0.85
    assert spec.sampling.temperature == 0.0
    assert spec.include_base and spec.seeds == (42,)


@pytest.mark.parametrize("path", sorted((REPO / "campaigns").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_campaign_validates(path):
    spec = load_campaign(path)
    assert spec.models and spec.benchmarks


def test_all_errors_reported_at_once_with_file_field_and_value():
    bad = minimal(
        name="bad name",
        seeds=[1, 1],
        models=[{"name": "m", "path": "/m", "dtype": "int3", "colour": "red"}],
    )
    bad["finetunes"][0]["train"] = {"learning_rate": -1}
    with pytest.raises(SpecError) as caught:
        parse_campaign(bad, source="c.yaml")
    message = str(caught.value)
    for expected in (
        "c.yaml: name:",
        "'bad name'",
        "models.0.dtype",
        "'int3'",
        "models.0.colour: unknown field",
        "finetunes.0.train.learning_rate",
        "seeds must be unique",
    ):
        assert expected in message, message


def test_cross_references_name_the_allowed_values():
    bad = minimal(finetunes=[{"name": "a", "dataset": "nope"}])
    with pytest.raises(
        SpecError,
        match=r"finetunes\.0\.dataset: 'nope' is not a dataset name; "
        r"allowed: \['d'\]",
    ):
        parse_campaign(bad)


def test_duplicate_names_and_reserved_base_rejected():
    bad = minimal(finetunes=[{"name": "base", "dataset": "d"}, {"name": "base", "dataset": "d"}])
    with pytest.raises(SpecError) as caught:
        parse_campaign(bad)
    assert "used twice" in str(caught.value) and "reserved" in str(caught.value)


def test_load_campaign_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="no such campaign file"):
        load_campaign(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"broken\.yaml: line \d+ is not valid YAML"):
        load_campaign(broken)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_campaign(not_mapping)


def test_the_readme_campaign_example_is_a_valid_spec():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The campaign format", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = parse_campaign(yaml.safe_load(block), source="README.md")
    assert spec.models[0].align is not None and spec.judges.rubric.mode == "online"


def test_csv_benchmark_needs_a_prompt_column():
    bad = minimal(benchmarks=[{"name": "b", "source": "requests.csv", "format": "csv"}])
    with pytest.raises(SpecError) as caught:
        parse_campaign(bad, source="c.yaml")
    # One line: no follow-on "benchmarks: Tuple should have at least 1 item" from pydantic.
    assert str(caught.value).splitlines() == [
        "c.yaml: benchmarks.0.prompt_column: required with format: csv; name the header of the "
        "prompt column, e.g. prompt_column: goal"
    ]


def test_benchmark_columns_only_with_csv():
    bad = minimal(
        benchmarks=[
            {"name": "a", "source": "adv.csv", "format": "advbench", "prompt_column": "goal"},
            {"name": "b", "source": "x.csv", "category_column": "kind"},
        ]
    )
    with pytest.raises(SpecError) as caught:
        parse_campaign(bad, source="c.yaml")
    message = str(caught.value)
    assert (
        "c.yaml: benchmarks.0.prompt_column: only read with format: csv (this benchmark has "
        "format: advbench); set format: csv or remove prompt_column" in message
    )
    assert "benchmarks.1.category_column: only read with format: csv" in message


def test_csv_benchmark_with_columns_validates():
    spec = parse_campaign(
        minimal(
            benchmarks=[
                {
                    "name": "b",
                    "source": "requests.csv",
                    "format": "csv",
                    "prompt_column": "goal",
                    "category_column": "kind",
                }
            ]
        )
    )
    bench = spec.benchmarks[0]
    assert (bench.prompt_column, bench.category_column) == ("goal", "kind")
    assert parse_campaign(minimal()).benchmarks[0].prompt_column is None


def test_sizes_are_whole_numbers_from_one_or_all():
    # -3 used to pass and, as a slice bound, trained on all but three examples.
    bad = minimal(
        models=[{"name": "m", "path": "/m", "align": {"datasets": [{"dataset": "d", "size": 0}]}}],
        finetunes=[
            {
                "name": "a",
                "dataset": "d",
                "sizes": [-3, 4, True, 2.5, "some"],
                "mix": [{"dataset": "d", "size": -1}],
            }
        ],
    )
    with pytest.raises(SpecError) as caught:
        parse_campaign(bad, source="c.yaml")
    allowed = "a size is a whole number >= 1 or 'all'"
    assert str(caught.value).splitlines() == [
        f"c.yaml: models.0.align.datasets.0.size: {allowed} (got 0)",
        f"c.yaml: finetunes.0.sizes.0: {allowed} (got -3)",
        f"c.yaml: finetunes.0.sizes.2: {allowed} (got True)",
        f"c.yaml: finetunes.0.sizes.3: {allowed} (got 2.5)",
        f"c.yaml: finetunes.0.sizes.4: {allowed} (got 'some')",
        f"c.yaml: finetunes.0.mix.0.size: {allowed} (got -1)",
    ]
    good = minimal(finetunes=[{"name": "a", "dataset": "d", "sizes": [1, "all"]}])
    assert parse_campaign(good).finetunes[0].sizes == (1, "all")
