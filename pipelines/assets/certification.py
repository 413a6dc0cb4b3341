"""The score and report stages as assets: ``certification`` (MQS, JUnit, HTML, audit notebook per model; with the
partition's self-test beside the evidence when it had one) and ``certification_table`` (all models)."""

import shutil
from pathlib import Path

import dagster as dg

from pipelines.assets.selftest import DETECTION_JSON
from pipelines.assets.selftest import FOLDER as SELF_TEST_FOLDER
from pipelines.audit import AUDIT_NOTEBOOK, EVIDENCE_NAME, run_audit_notebook
from pipelines.code_digest import apr_code_digest
from pipelines.resources import WorkRoot
from pipelines.stage import StageResult, run_stage, stage_output
from pipelines.work_root import FileRef, StageRecord, discard_unfinished, file_ref, replace_dir, sha256_file

CODE_VERSION = "1"
ASSET = "certification"
TABLE_ASSET = "certification_table"
JUNIT_NAME = "junit.xml"
REPORT_NAME = "report.html"
TABLE_FILES = ("models.csv", "index.html")


def folder_files(folder: Path) -> dict[str, FileRef]:
    """FileRefs of every file under a folder, keyed by their relative path."""
    return {str(path.relative_to(folder)): file_ref(path) for path in sorted(folder.rglob("*")) if path.is_file()}


def publish(source: Path, target: Path) -> None:
    """Copy a finished folder to its published place, replacing the old one only once the copy is complete.

    Sub-folders of the old one that ``source`` does not have are carried over: they hold evidence of other
    runs kept beside the pipeline's (``gpu-h200/`` from a GPU machine, ``humaneval/``, ``self-test/``), which
    a re-run on this machine cannot reproduce and must never delete. Top-level files are the pipeline's own."""
    target.parent.mkdir(parents=True, exist_ok=True)
    discard_unfinished(target.parent, target.name)  # what an interrupted publish left, before this one starts
    staging = target.with_name(f".{target.name}.new")
    shutil.copytree(source, staging)
    if target.is_dir():
        for entry in sorted(target.iterdir()):
            if entry.is_dir() and not entry.is_symlink() and not (staging / entry.name).exists():
                shutil.copytree(entry, staging / entry.name, symlinks=True)
    replace_dir(staging, target)


def certify_folder(model: str, folder: Path) -> dict:
    """Render the certification of ``folder/evidence.jsonl`` into ``folder``: score, JUnit, HTML, audit notebook
    (and the sentence of ``folder/self-test`` when it measured the gates of the playbook behind the evidence)."""
    from apr.qa import stages
    from apr.qa.evidence import read_evidence
    from apr.qa.selftest.report import certification_self_test, verdict_sentence

    records = read_evidence(folder / EVIDENCE_NAME).records
    mqs = stages.score(records)
    self_test = certification_self_test(folder, records)
    stages.report(records, mqs, folder, title=f"apr certification: {model}", self_test=self_test)
    run_audit_notebook(model, folder)
    return {
        "self_test": verdict_sentence(self_test) if self_test is not None else None,
        "mqs": mqs.score,
        "raw": mqs.raw,
        "grade": mqs.grade,
        "status": mqs.status.value,
        "gateways_passed": mqs.gateways_passed,
        "records": mqs.total_records,
        "outcomes": {str(outcome): count for outcome, count in mqs.outcomes.items()},
        "blockers": list(mqs.blockers),
    }


def self_test_source(self_test: StageRecord, published: Path) -> Path | None:
    """The self-test a certification renders beside its evidence: the partition's own (the ``self_test`` asset,
    full tier), else one kept in the published folder (``apr qa --self-test`` into ``certifications/<model>/
    self-test``, which publishing carries over), so report, notebook and tables agree on it. ``certify_folder``
    cites it only when it measured the gates of the playbook behind the evidence."""
    if self_test.facts.get("enabled"):
        return Path(self_test.facts["folder"])
    kept = published / SELF_TEST_FOLDER
    return kept if (kept / DETECTION_JSON).is_file() else None


def build_certification(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=ASSET,
        partitions_def=partitions,
        code_version=CODE_VERSION,
        group_name="certification",
        kinds={"python", "html"},
        ins={"gate_results": dg.AssetIn("gate_results"), "self_test": dg.AssetIn("self_test")},
        description="certifications/<model>/: evidence, MQS, JUnit, HTML report and the executed audit notebook with charts.",
    )
    def certification(
        context: dg.AssetExecutionContext, work: WorkRoot, gate_results: StageRecord, self_test: StageRecord
    ):
        key = context.partition_key
        layout = work.layout()
        evidence = gate_results.path("evidence")
        published = work.certifications() / key
        source = self_test_source(self_test, published)

        def build(_: Path) -> StageResult:
            with layout.staging_dir(ASSET, key, "out") as folder:
                shutil.copy2(evidence, folder / EVIDENCE_NAME)
                if source is not None:
                    shutil.copytree(source, folder / SELF_TEST_FOLDER)
                facts = certify_folder(key, folder)
            folder = layout.asset_dir(ASSET, key) / "out"
            publish(folder, published)
            own = {name: ref for name, ref in folder_files(published).items() if (folder / name).is_file()}
            return StageResult(files=own, facts={**facts, "published": str(published)})

        record = run_stage(
            layout,
            asset=ASSET,
            partition=key,
            code_version=CODE_VERSION,
            inputs={
                "evidence": gate_results.files["evidence"].sha256,
                "self_test": sha256_file(source / DETECTION_JSON) if source is not None else None,
                "notebook": sha256_file(AUDIT_NOTEBOOK),
                "published": str(published),
                "apr": apr_code_digest("qa"),
            },
            build=build,
        )
        facts = record.facts
        return stage_output(
            record,
            EVIDENCE_NAME,
            {
                "MQS": dg.MetadataValue.int(facts["mqs"]),
                "grade": dg.MetadataValue.text(facts["grade"]),
                "status": dg.MetadataValue.text(facts["status"]),
                "records": dg.MetadataValue.int(facts["records"]),
                "gateways_passed": dg.MetadataValue.bool(facts["gateways_passed"]),
                "blockers": dg.MetadataValue.text("; ".join(facts["blockers"]) or "none"),
                "self_test": dg.MetadataValue.text(facts.get("self_test") or "none ran for this certification"),
                "folder": dg.MetadataValue.path(facts["published"]),
                "report": dg.MetadataValue.path(str(Path(facts["published"]) / REPORT_NAME)),
                "audit_notebook": dg.MetadataValue.path(str(Path(facts["published"]) / "audit.ipynb")),
            },
        )

    return certification


def build_certification_table(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=TABLE_ASSET,
        code_version=CODE_VERSION,
        group_name="certification",
        kinds={"csv", "html"},
        ins={"certification": dg.AssetIn("certification", partition_mapping=dg.AllPartitionMapping())},
        description="certifications/models.csv and index.html over every certified model.",
    )
    def certification_table(work: WorkRoot, certification: dict[str, StageRecord]):
        from apr.qa import stages

        layout = work.layout()
        if not certification:
            raise dg.Failure("no model has a certification yet; materialize `certification` for a model first")
        target = work.certifications()

        def build(_: Path) -> StageResult:
            # apr renders the tables from every evidence.jsonl under the certifications folder.
            rows = stages.tables(target)
            return StageResult(
                files={name: file_ref(target / name) for name in TABLE_FILES},
                facts={
                    "models": sorted(f"{row.model} ({row.tier})" for row in rows),
                    "statuses": {f"{row.model} ({row.tier})": row.status for row in rows},
                },
            )

        record = run_stage(
            layout,
            asset=TABLE_ASSET,
            partition=None,
            code_version=CODE_VERSION,
            inputs={
                "certifications": {key: rec.data_version for key, rec in certification.items()},
                "folder": str(target),
            },
            build=build,
        )
        return stage_output(
            record,
            "models.csv",
            {
                "models": dg.MetadataValue.int(len(record.facts["models"])),
                "statuses": dg.MetadataValue.json(record.facts["statuses"]),
                "index": dg.MetadataValue.path(record.files["index.html"].path),
            },
        )

    return certification_table
