"""Fixtures shared by the pipeline e2e tests: the fixture-model graph materialized once in process."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
from pipelines_support import MODEL, fixture_playbook, materialize_graph

from pipelines.definitions import build_definitions
from pipelines.resources import WorkRoot


@pytest.fixture(scope="session")
def pipeline_graph(tmp_path_factory: pytest.TempPathFactory, fixture_models) -> dict:
    """Definitions over one fixture-model playbook, writing under a temp work root."""
    root = tmp_path_factory.mktemp("pipelines")
    playbooks = root / "playbooks"
    playbooks.mkdir()
    (playbooks / f"{MODEL}-quick.playbook.yaml").write_text(
        fixture_playbook(fixture_models["llama"]["gguf"]), encoding="utf-8"
    )
    work = WorkRoot(root=str(root / "work"), certifications_dir=str(root / "certifications"))
    defs = build_definitions(playbooks, work)
    return {"defs": defs, "work": work, "root": root, "playbooks": playbooks}


@pytest.fixture(scope="session")
def pipeline_instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture(scope="session")
def in_process_run(pipeline_graph: dict, pipeline_instance: dg.DagsterInstance) -> dict:
    """The first in-process materialization, with a copy of its evidence (later tests edit the work root)."""
    per_model, table = materialize_graph(pipeline_graph, pipeline_instance)
    evidence = pipeline_graph["root"] / "in-process-evidence.jsonl"
    shutil.copyfile(pipeline_graph["root"] / "certifications" / MODEL / "evidence.jsonl", evidence)
    return {"per_model": per_model, "table": table, "evidence": evidence}
