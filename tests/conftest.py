"""Shared fixtures: each lives in tests/fixtures/ and is re-exported here."""

from tests.fixtures.audit_models import audit_models  # noqa: F401
from tests.fixtures.judge_server import judge_server  # noqa: F401
from tests.fixtures.models import tiny_model_dir  # noqa: F401
from tests.fixtures.openai_ft_server import ft_server  # noqa: F401
from tests.fixtures.ray_cluster import ray_local  # noqa: F401
from tests.fixtures.reliability import (  # noqa: F401
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
)
from tests.fixtures.s3_server import s3_server  # noqa: F401
