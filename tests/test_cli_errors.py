"""Bad command-line input ends as one clear line on stderr and exit status 2, found before any Prefect server
or Dask cluster starts; a flow that fails prints its run logs without tracebacks, then one line, and sends
nothing to the server after it stopped."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clothret.cli import main
from clothret.datasets.catalogue import ManifestEntry, file_sha256, write_manifest
from clothret.demo import build_catalogue

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def good(tiny_workdir, tmp_path_factory) -> dict:
    """A valid manifest and bundle, and store and index folders that can be made."""
    root = tmp_path_factory.mktemp("cli")
    manifest = root / "manifest.jsonl"
    build_catalogue(str(tiny_workdir / "data" / "validation"), str(manifest))
    return {"manifest": str(manifest), "bundle": str(tiny_workdir / "models" / "bundle.yaml"),
            "store": str(root / "out" / "store"), "index": str(root / "out" / "index"), "root": root}


def _refresh_args(good: dict, **override) -> list[str]:
    values = {**good, **override}
    return ["refresh", "--manifest", values["manifest"], "--bundle", values["bundle"], "--store", values["store"],
            "--index", values["index"]]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("clothret: error: ")
    return lines[0]


def _no_server_started(caplog) -> None:
    assert not [r for r in caplog.records if r.name.startswith(("flows.", "prefect"))], caplog.text


def _lines(good: dict) -> list[str]:
    return Path(good["manifest"]).read_text().splitlines()


@pytest.fixture
def quiet_caplog(caplog):
    """Every log record, to show that no Prefect server or flow run started."""
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture(autouse=True)
def _detached_console_handlers():
    """Console handlers an earlier test configured may write to a capture stream pytest has closed since (a
    '--- Logging error ---' on stderr): in-process calls here show on stderr only what main() writes itself.
    The subprocess tests below see the whole console."""
    root = logging.getLogger()
    consoles = [h for h in root.handlers if type(h) is logging.StreamHandler or type(h).__name__ == "PrefectConsoleHandler"]
    for handler in consoles:
        root.removeHandler(handler)
    yield
    for handler in consoles:
        root.addHandler(handler)


def test_missing_manifest(good, tmp_path, capsys, quiet_caplog):
    missing = str(tmp_path / "nope.jsonl")
    assert main(_refresh_args(good, manifest=missing)) == 2
    line = _one_error_line(capsys)
    assert line == f"clothret: error: manifest not found: {missing} (write one with `clothret catalogue`)"
    _no_server_started(quiet_caplog)


def test_manifest_line_without_sha256(good, tmp_path, capsys, quiet_caplog):
    lines = _lines(good)
    third = json.loads(lines[2])
    del third["sha256"]
    bad = tmp_path / "no-sha.jsonl"
    bad.write_text("\n".join([*lines[:2], json.dumps(third), *lines[3:]]) + "\n")
    assert main(_refresh_args(good, manifest=str(bad))) == 2
    assert _one_error_line(capsys) == (
        f"clothret: error: {bad} line 3: missing sha256 "
        "(one JSON object a line with image_id, uri, sha256 and an optional item_id)"
    )
    _no_server_started(quiet_caplog)


def test_duplicate_image_id_and_a_line_that_is_not_json(good, tmp_path, capsys, quiet_caplog):
    lines = _lines(good)
    dup = tmp_path / "dup.jsonl"
    dup.write_text("\n".join([*lines[:4], lines[1]]) + "\n")
    assert main(["backfill", *_refresh_args(good, manifest=str(dup))[1:]]) == 2
    image_id = json.loads(lines[1])["image_id"]
    assert _one_error_line(capsys) == (
        f"clothret: error: {dup} line 5: duplicate image_id '{image_id}' (first on line 2); image ids must be unique"
    )
    broken = tmp_path / "broken.jsonl"
    broken.write_text(lines[0] + "\n" + lines[1][:-3] + "\n")
    assert main(_refresh_args(good, manifest=str(broken))) == 2
    assert _one_error_line(capsys).startswith(f"clothret: error: {broken} line 2: not JSON (")
    _no_server_started(quiet_caplog)


def test_a_jpeg_given_as_bundle_or_manifest(good, tiny_workdir, capsys, quiet_caplog):
    jpeg = str(sorted((tiny_workdir / "data" / "validation" / "image").iterdir())[0])
    assert main(_refresh_args(good, bundle=jpeg)) == 2
    assert _one_error_line(capsys) == (
        f"clothret: error: {jpeg} is not a YAML or JSON model bundle: not UTF-8 text (byte 0xff)"
    )
    assert main(_refresh_args(good, manifest=jpeg)) == 2
    assert _one_error_line(capsys).startswith(f"clothret: error: {jpeg} is not a JSON Lines manifest: not UTF-8 text")
    _no_server_started(quiet_caplog)


def test_bundle_naming_missing_weights_or_invalid(good, tiny_workdir, tmp_path, capsys, quiet_caplog):
    models = tmp_path / "models"
    shutil.copytree(tiny_workdir / "models", models)
    (models / "embedder.safetensors").unlink()
    assert main(_refresh_args(good, bundle=str(models / "bundle.yaml"))) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"clothret: error: {models / 'bundle.yaml'}: the weights of ")
    assert f"is missing: {models / 'embedder.safetensors'}" in line

    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("detectors: []\nembedders: [{name: e}]\ncolour: blue\n")
    assert main(_refresh_args(good, bundle=str(invalid))) == 2
    assert _one_error_line(capsys) == (
        f"clothret: error: {invalid} is not a valid model bundle: detectors: List should have at least 1 item "
        "after validation, not 0; embedders.0.weights: Field required; colour: Extra inputs are not permitted"
    )
    _no_server_started(quiet_caplog)


def test_store_or_index_that_cannot_be_written(good, tmp_path, capsys, quiet_caplog):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    assert main(_refresh_args(good, store=str(a_file / "store"))) == 2
    assert _one_error_line(capsys) == (
        f"clothret: error: feature store {a_file / 'store'} is inside {a_file}, which is a file: a folder is needed"
    )
    assert main(_refresh_args(good, index=str(a_file))) == 2
    assert _one_error_line(capsys) == f"clothret: error: index {a_file} is a file: a folder is needed"
    _no_server_started(quiet_caplog)


def test_store_on_a_missing_s3_bucket(good, s3_bucket, capsys, quiet_caplog):
    missing = s3_bucket + "-missing"
    assert main(_refresh_args(good, store=f"{missing}/store", index=f"{s3_bucket}/index")) == 2
    bucket = missing.removeprefix("s3://")
    assert _one_error_line(capsys) == (
        f"clothret: error: feature store {missing}/store: bucket '{bucket}' does not exist "
        "(create it, or check the endpoint: AWS_ENDPOINT_URL)"
    )
    from clothret.preflight import check_location

    check_location(f"{s3_bucket}/index", "index")  # an existing bucket passes
    _no_server_started(quiet_caplog)


def test_promote_and_rollback_of_an_index_without_builds(tmp_path, capsys, quiet_caplog):
    index = str(tmp_path / "index")
    assert main(["promote", "--index", index]) == 2
    assert _one_error_line(capsys) == (
        f"clothret: error: index {index} has no complete build: run `clothret refresh` or `clothret backfill` first"
    )
    assert main(["rollback", "--index", index]) == 2
    assert _one_error_line(capsys) == f"clothret: error: nothing was published under index {index}: nothing to roll back"
    _no_server_started(quiet_caplog)


@pytest.mark.parametrize(
    ("engine", "says"),
    [
        (["batch_sise=3"], "invalid EngineConfig settings: batch_sise: Extra inputs are not permitted"),
        (["autocast=int8"], "invalid EngineConfig settings: autocast: Input should be 'auto', 'bf16', 'fp16' or 'fp32'"),
        (["batch_size=32", "oops"], "--engine 'oops': expected SETTING=VALUE"),
    ],
    ids=["unknown-setting", "bad-value", "no-value"],
)
def test_bad_engine_settings_are_refused_first(good, capsys, quiet_caplog, engine, says):
    flags = [arg for item in engine for arg in ("--engine", item)]
    for argv in (_refresh_args(good) + flags, ["search", "any.jpg", "--bundle", "missing.yaml", *flags],
                 ["evaluate", "--bundle", "missing.yaml", *flags]):
        assert main(argv) == 2
        assert says in _one_error_line(capsys), argv  # before the bundle is even looked at
    _no_server_started(quiet_caplog)


def test_engine_settings_reach_the_refresh_config(good):
    from clothret.cli import _refresh_config, build_parser

    args = build_parser().parse_args(_refresh_args(good) + ["--engine", "batch_size=8", "--engine", "autocast=bf16",
                                                            "--engine", "group_by_shape=false"])
    engine = _refresh_config(args).engine
    assert (engine.batch_size, engine.autocast, engine.group_by_shape) == (8, "bf16", False)


def test_verbose_adds_the_traceback(good, tmp_path, capsys):
    missing = str(tmp_path / "nope.jsonl")
    assert main(["--verbose", *_refresh_args(good, manifest=missing)]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "PreflightError" in err
    assert err.splitlines()[-1] == f"clothret: error: manifest not found: {missing} (write one with `clothret catalogue`)"


def _cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """The `clothret` command in its own process, with no Prefect API configured (as a user runs it)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["CLOTHRET_DASK_WORKERS"] = "1"
    return subprocess.run([sys.executable, "-m", "clothret.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_bad_input_in_a_fresh_process_prints_one_line_and_starts_no_server(good, tmp_path):
    lines = _lines(good)
    bad = tmp_path / "no-sha.jsonl"
    bad.write_text(lines[0] + "\n" + json.dumps({"image_id": "x", "uri": "x.jpg"}) + "\n")
    run = _cli(_refresh_args(good, manifest=str(bad)), cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr == (
        f"clothret: error: {bad} line 2: missing sha256 "
        "(one JSON object a line with image_id, uri, sha256 and an optional item_id)\n"
    )  # nothing else: no server started, no log line, no traceback
    assert run.stdout == ""


@pytest.mark.slow
def test_a_failing_flow_prints_its_logs_then_one_line(good, tmp_path):
    """A manifest whose only image is not an image: the refresh runs, embeds nothing and fails to publish."""
    not_an_image = tmp_path / "not-an-image.jpg"
    not_an_image.write_text("id,name\n1,shirt\n")
    manifest = tmp_path / "only-bad.jsonl"
    write_manifest([ManifestEntry("only", str(not_an_image), file_sha256(str(not_an_image)), "item")], str(manifest))
    run = _cli(_refresh_args(good, manifest=str(manifest), store=str(tmp_path / "store"),
                             index=str(tmp_path / "index")), cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    err = run.stderr.splitlines()
    assert err[-1].startswith("clothret: error: ") and "hold no boxes" in err[-1], run.stderr
    assert any("not a recognised image" in line for line in err)  # the run's own logs are there
    assert "Traceback" not in run.stderr and 'File "' not in run.stderr
    assert "Error logging to API" not in run.stderr and "connection attempts failed" not in run.stderr


def test_worker_processes_print_run_logs_without_tracebacks():
    """The configuration a Dask worker inherits: Prefect's console handler prints a failed task's line,
    not its traceback."""
    from flows.console import HANDLER_CLASS_ENV, console_without_tracebacks

    code = (
        "import logging\n"
        "from prefect.logging.configuration import setup_logging\n"
        "setup_logging()\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    logging.getLogger('clothret.pipeline').exception('Task run failed with exception')\n"
    )
    with console_without_tracebacks():
        env = dict(os.environ)
        assert env[HANDLER_CLASS_ENV] == "flows.console.TracebackFreeConsoleHandler"
    assert HANDLER_CLASS_ENV not in os.environ
    quiet = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "Task run failed with exception" in quiet.stderr and "Traceback" not in quiet.stderr, quiet.stderr
    env.pop(HANDLER_CLASS_ENV)
    loud = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "Traceback" in loud.stderr and "ZeroDivisionError" in loud.stderr, loud.stderr
