"""The Dagster UI of the pipelines: `dagster dev` on loopback, the graph over GraphQL, a Chromium screenshot."""

from __future__ import annotations

import pytest
from pipelines_ui_support import DagsterServer, chromium, install_chromium, png_size, start_dagster_dev

# The certification graph as the issue describes it: asset -> the assets it reads.
EXPECTED_DEPENDENCIES = {
    "checkpoint": set(),
    "gguf": {"checkpoint"},
    "apr": {"checkpoint"},
    "safetensors": {"checkpoint"},
    "inference_traces": {"checkpoint", "gguf", "apr", "safetensors"},
    "gate_results": {"checkpoint", "gguf", "apr", "safetensors", "inference_traces"},
    "self_test": {"gguf", "gate_results"},  # a no-op for partitions whose playbook has no self_test: block
    "certification": {"gate_results", "self_test"},
    "certification_table": {"certification"},
    # full tier (FUNCTIONAL-CORRECTNESS): apr eval per format against the SafeTensors reference
    "functional_reference": {"safetensors"},
    "functional_gguf": {"gguf", "functional_reference"},
    "functional_apr": {"apr", "functional_reference"},
    "functional_safetensors": {"safetensors", "functional_reference"},
}
GRAPH_PAGE = "/locations/pipelines.definitions/asset-groups/certification"
# Text the UI shows when something went wrong, and the first-run modal `nux: enabled: false` removes.
ERROR_MARKERS = (
    "Unexpected error",
    "unexpected error",
    "Something went wrong",
    "PythonError",
    "DagsterInvalidDefinitionError",
    "Could not load",
    "Join the Dagster community",
)

ASSET_NODES_QUERY = """
{ assetNodes { assetKey { path } groupName isPartitioned partitionKeys dependencyKeys { path }
  assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }
"""


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("dagster-dev")
    server = start_dagster_dev(base / "home", base / "work", base / "dagster-dev.log")
    try:
        yield server
    finally:
        code = server.stop()
    # SIGTERM must stop `dagster dev` (ecosystem pitfall 1: a backgrounded one ignores it).
    assert code is not None, server.log_tail()


def test_graphql_lists_the_certification_graph_with_model_partitions(dagster_dev: DagsterServer) -> None:
    from pipelines.partitions import DEFAULT_PLAYBOOKS_DIR, discover_playbooks

    nodes = {tuple(node["assetKey"]["path"]): node for node in dagster_dev.graphql(ASSET_NODES_QUERY)["assetNodes"]}
    dependencies = {path[-1]: {dep["path"][-1] for dep in node["dependencyKeys"]} for path, node in nodes.items()}
    assert dependencies == EXPECTED_DEPENDENCIES

    expected_partitions = list(discover_playbooks(DEFAULT_PLAYBOOKS_DIR))
    assert expected_partitions, f"no playbooks in {DEFAULT_PLAYBOOKS_DIR}: the graph would have no model partitions"
    for path, node in nodes.items():
        if path[-1] == "certification_table":
            assert not node["isPartitioned"]
        else:
            assert node["isPartitioned"], path
            assert node["partitionKeys"] == expected_partitions, path

    # Gateway checks are blocking, so a model that fails to load stops the assets below it.
    for gateway in ("checkpoint", "gguf", "apr", "safetensors"):
        checks = nodes[(gateway,)]["assetChecksOrError"]["checks"]
        assert checks and all(check["blocking"] for check in checks), gateway


@pytest.mark.ui
def test_chromium_renders_the_asset_graph_without_an_error_overlay(dagster_dev: DagsterServer, tmp_path) -> None:
    binary, why_not = install_chromium()
    if binary is None:
        pytest.skip(why_not)
    url = dagster_dev.url + GRAPH_PAGE
    shot = tmp_path / "asset-graph.png"
    chromium(binary, url, f"--screenshot={shot}", profile=tmp_path / "profile-shot")
    dom = chromium(binary, url, "--dump-dom", profile=tmp_path / "profile-dom").stdout

    assert png_size(shot) == (1600, 1000)
    # A blank or error page compresses to a few KB; the rendered graph with eight asset cards does not.
    assert shot.stat().st_size > 40_000, shot.stat().st_size
    for marker in ERROR_MARKERS:
        assert marker not in dom, f"{marker!r} on {url}"
    for asset in EXPECTED_DEPENDENCIES:
        # Zoomed out, the UI shortens long names in the middle ("certificati…_table").
        shown = asset in dom or (asset[:8] in dom and f"…{asset[-6:]}" in dom)
        assert shown, f"asset {asset!r} not rendered on {url}"
