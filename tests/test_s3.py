"""Object storage: the job end to end against a real S3-protocol server on loopback.

moto's standalone server (moto[server]) is started once for this module on a free port; the job
talks to it through pyarrow's own S3 client, configured only by the standard environment
(AWS_ENDPOINT_URL and the usual credentials). boto3 is used by the tests alone, to set buckets up
and to look at what the job left behind, including multipart uploads that never completed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, delta_rows, random_x, reference, run_score, write_x

from score import storage

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no instance-role lookups against a real metadata service
    "NO_PROXY": "127.0.0.1,localhost",
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def moto_server(**settings: str):
    """A moto S3 server on loopback; stopped (and its state gone) afterwards."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, **CREDENTIALS, **settings},
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"moto server did not start on {endpoint}")
            time.sleep(0.1)
    try:
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def s3_server():
    with moto_server() as endpoint:
        yield endpoint


def client_for(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def point_the_job_at(endpoint: str, monkeypatch) -> None:
    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    storage._bucket_filesystem.cache_clear()  # a file system per bucket is cached per process


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A boto3 client on the server; the job's environment points at it, with fresh buckets."""
    point_the_job_at(s3_server, monkeypatch)
    client = client_for(s3_server)
    for bucket in ("landing", "scored"):
        _empty_bucket(client, bucket)
        client.create_bucket(Bucket=bucket)
    yield client
    storage._bucket_filesystem.cache_clear()


def _empty_bucket(client, bucket: str) -> None:
    try:
        for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
        client.delete_bucket(Bucket=bucket)
    except client.exceptions.NoSuchBucket:
        pass


def objects(client, bucket: str) -> dict[str, bytes]:
    """Every object of the bucket with its bytes, except pyarrow's zero-byte 'dir/' markers."""
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {item["Key"]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for item in listed if not item["Key"].endswith("/")}


def uploads(client, bucket: str) -> list[str]:
    """Keys of multipart uploads started and never completed or aborted."""
    return [upload["Key"] for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def put(client, bucket: str, key: str, path) -> str:
    client.upload_file(str(path), bucket, key)
    return f"s3://{bucket}/{key}"


def read_object(client, bucket: str, key: str, tmp_path):
    local = tmp_path / f"downloaded-{key.replace('/', '_')}"
    client.download_file(bucket, key, str(local))
    return pq.read_table(local)


def assert_scored(table, model_path: str, x: np.ndarray) -> None:
    ref = reference(model_path, x)
    assert table.num_rows == len(x)
    assert np.array_equal(np.asarray(table.column("y_pred").to_pylist()), ref.y_pred)
    assert np.array_equal(np.asarray(table.column("top_k_values").to_pylist()), ref.top_values)
    assert np.abs(np.asarray(table.column("top_k_probs").to_pylist()) - ref.top_probs).max() <= 1e-6


# Success paths --------------------------------------------------------------------------------------
def test_file_mode_reads_and_writes_the_store(s3, tmp_path, model_path):
    x = random_x(3000, seed=1)
    source = put(s3, "landing", "2026-11-29/events.parquet", write_x(tmp_path / "in.parquet", x))
    result = run_score(source, "s3://scored/2026-11-29/events.parquet", "--model", model_path,
                       "--quiet", "--batch-size", "512")
    assert (result.code, result.stderr) == (0, "")
    assert set(objects(s3, "scored")) == {"2026-11-29/events.parquet"}  # no hidden leftovers
    assert uploads(s3, "scored") == []
    assert_scored(read_object(s3, "scored", "2026-11-29/events.parquet", tmp_path), model_path, x)


def test_the_store_gives_the_same_bytes_of_scores_as_a_local_disk(s3, tmp_path, model_path):
    x = random_x(500, seed=2)
    local_input = write_x(tmp_path / "in.parquet", x)
    source = put(s3, "landing", "in.parquet", local_input)
    assert run_score(source, "s3://scored/out.parquet", "--model", model_path, "--quiet").code == 0
    assert run_score(local_input, tmp_path / "out.parquet", "--model", model_path, "--quiet").code == 0
    remote = read_object(s3, "scored", "out.parquet", tmp_path)
    local = pq.read_table(tmp_path / "out.parquet")
    assert remote.drop_columns([]).replace_schema_metadata(None).equals(local.replace_schema_metadata(None))


def test_directory_mode_writes_one_object_per_file_and_success_last(s3, tmp_path, model_path):
    parts = {"day/part-0.parquet": random_x(700, seed=3), "day/hour=01/part-1.parquet": random_x(300, seed=4)}
    for key, x in parts.items():
        put(s3, "landing", key, write_x(tmp_path / key.replace("/", "_"), x))
    put(s3, "landing", "day/_ignored.parquet", write_x(tmp_path / "ignored.parquet", random_x(5)))
    result = run_score("s3://landing/day", "s3://scored/day", "--model", model_path, "--quiet")
    assert (result.code, result.stderr) == (0, "")
    written = objects(s3, "scored")
    assert set(written) == {"day/part-0.parquet", "day/hour=01/part-1.parquet", "day/_SUCCESS"}
    manifest = json.loads(written["day/_SUCCESS"])
    assert manifest["rows"] == 1000
    assert manifest["files"] == [{"path": "hour=01/part-1.parquet", "rows": 300},
                                 {"path": "part-0.parquet", "rows": 700}]
    for key, x in parts.items():
        assert_scored(read_object(s3, "scored", key, tmp_path), model_path, x)
    last_modified = {item["Key"]: item["LastModified"] for item in s3.list_objects_v2(Bucket="scored")["Contents"]}
    assert last_modified["day/_SUCCESS"] >= max(last_modified["day/part-0.parquet"],
                                                last_modified["day/hour=01/part-1.parquet"])


def test_a_rerun_removes_the_stale_success_marker_before_scoring(s3, tmp_path, model_path):
    put(s3, "landing", "day/part-0.parquet", write_x(tmp_path / "good.parquet", random_x(50)))
    assert run_score("s3://landing/day", "s3://scored/day", "--model", model_path, "--quiet").code == 0
    bad = random_x(50)
    bad[7, 2] = 99
    put(s3, "landing", "day/part-1.parquet", write_x(tmp_path / "bad.parquet", bad))
    result = run_score("s3://landing/day", "s3://scored/day", "--model", model_path, "--quiet")
    assert result.code == 65
    assert result.lines == [
        "error: s3://landing/day/part-1.parquet: row 7: x[2] = 99 is not one of the model's input "
        "values (0..10)"
    ]
    assert "day/_SUCCESS" not in objects(s3, "scored")


def test_model_checksum_and_summary_on_the_store(s3, tmp_path, model_path):
    x = random_x(400, seed=5)
    source = put(s3, "landing", "in.parquet", write_x(tmp_path / "in.parquet", x))
    model_uri = put(s3, "landing", "models/model.onnx", model_path)
    put(s3, "landing", "models/model.onnx.sha256", model_path + ".sha256")
    result = run_score(source, "s3://scored/out.parquet", "--model", model_uri, "--quiet",
                       "--summary", "s3://scored/runs/summary.json")
    assert (result.code, result.stderr) == (0, "")
    summary = json.loads(objects(s3, "scored")["runs/summary.json"])
    assert (summary["status"], summary["rows_in"], summary["model"]["location"]) == ("succeeded", 400, model_uri)
    assert_scored(read_object(s3, "scored", "out.parquet", tmp_path), model_path, x)

    s3.put_object(Bucket="landing", Key="models/model.onnx.sha256", Body=b"0" * 64 + b"  model.onnx\n")
    result = run_score(source, "s3://scored/other.parquet", "--model", model_uri, "--quiet")
    assert result.code == 78
    assert result.lines[0].startswith(f"error: {model_uri}: sha256 is ")
    assert "other.parquet" not in objects(s3, "scored")


# Errors keep their exit codes and name the URI ------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "output", "code", "line"),
    [
        pytest.param("s3://landing/absent.parquet", "s3://scored/out.parquet", 66,
                     "error: s3://landing/absent.parquet: no such object or prefix", id="missing_key"),
        pytest.param("s3://no-such-bucket/in.parquet", "s3://scored/out.parquet", 66,
                     "error: s3://no-such-bucket/in.parquet: no such bucket 'no-such-bucket'",
                     id="missing_input_bucket"),
        pytest.param("s3://landing/in.parquet", "s3://no-such-bucket/out.parquet", 73,
                     "error: s3://no-such-bucket/out.parquet: cannot create the output "
                     "(no such bucket 'no-such-bucket')", id="missing_output_bucket"),
    ],
)
def test_missing_buckets_and_keys(s3, tmp_path, model_path, source, output, code, line):
    put(s3, "landing", "in.parquet", write_x(tmp_path / "in.parquet", random_x(10)))
    result = run_score(source, output, "--model", model_path, "--quiet")
    assert (result.code, result.lines) == (code, [line])
    assert objects(s3, "scored") == {}


def test_missing_model_on_the_store_is_a_configuration_error(s3, tmp_path, model_path):
    source = put(s3, "landing", "in.parquet", write_x(tmp_path / "in.parquet", random_x(10)))
    result = run_score(source, "s3://scored/out.parquet", "--model", "s3://landing/models/none.onnx")
    assert result.code == 78
    assert result.lines == ["error: s3://landing/models/none.onnx: model not found; run `make export`, "
                            "or pass --model / set SCORE_MODEL"]


def test_an_unreachable_store_is_the_retryable_exit_74(s3, tmp_path, model_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens
    storage._bucket_filesystem.cache_clear()
    result = run_score("s3://landing/in.parquet", tmp_path / "out.parquet", "--model", model_path, "--quiet")
    assert result.code == 74
    assert len(result.lines) == 1
    assert result.lines[0].startswith("error: s3://landing/in.parquet: storage or network error while reading (")
    assert "NETWORK_CONNECTION" in result.lines[0]
    assert not (tmp_path / "out.parquet").exists()


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory):
    """A server that enforces authentication once its bucket and one object are in place.

    moto lets the first INITIAL_NO_AUTH_ACTION_COUNT requests through and then checks every
    request's credentials: the job's unknown access key is refused with a real HTTP 403.
    """
    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="2") as endpoint:
        client = client_for(endpoint)
        client.create_bucket(Bucket="locked")  # request 1
        local = write_x(tmp_path_factory.mktemp("locked") / "in.parquet", random_x(10))
        client.upload_file(local, "locked", "in.parquet")  # request 2
        yield endpoint, local


@pytest.mark.parametrize(
    ("source", "output", "extra", "code", "line"),
    [
        pytest.param("s3://locked/in.parquet", "LOCAL", [], 77,
                     "error: s3://locked/in.parquet: permission denied (When getting information for key "
                     "'in.parquet' in bucket 'locked': AWS Error ACCESS_DENIED during HeadObject operation: "
                     "No response body.)", id="input"),
        pytest.param("LOCAL", "s3://locked/out.parquet", [], 73,
                     "error: s3://locked/out.parquet: cannot create the output: permission denied (When getting "
                     "information for key 'out.parquet' in bucket 'locked': AWS Error ACCESS_DENIED during "
                     "HeadObject operation: No response body.)", id="output"),
        pytest.param("LOCAL", "LOCAL_OUT", ["--summary", "s3://locked/summary.json"], 73,
                     "error: --summary s3://locked/summary.json: cannot create the output: permission denied "
                     "(When getting information for key 'summary.json' in bucket 'locked': AWS Error "
                     "ACCESS_DENIED during HeadObject operation: No response body.)", id="summary"),
    ],
)
def test_no_permission(locked_server, monkeypatch, tmp_path, model_path, source, output, extra, code, line):
    endpoint, local_input = locked_server
    point_the_job_at(endpoint, monkeypatch)
    names = {"LOCAL": local_input, "LOCAL_OUT": str(tmp_path / "out.parquet")}
    result = run_score(names.get(source, source), names.get(output, output), "--model", model_path,
                       "--quiet", *extra)
    assert (result.code, result.lines) == (code, [line])


def test_a_file_where_the_output_directory_should_be(s3, tmp_path, model_path):
    put(s3, "landing", "day/part-0.parquet", write_x(tmp_path / "in.parquet", random_x(10)))
    s3.put_object(Bucket="scored", Key="day", Body=b"not a directory")
    result = run_score("s3://landing/day", "s3://scored/day", "--model", model_path, "--quiet")
    assert (result.code, result.lines) == (73, [
        "error: s3://scored/day: is a file; INPUT is a directory, so OUTPUT must be a directory"])
    assert objects(s3, "scored") == {"day": b"not a directory"}


# Nothing partial under OUTPUT, whatever happens --------------------------------------------------
def test_an_invalid_row_late_in_the_file_leaves_the_previous_object_and_nothing_else(s3, tmp_path, model_path):
    x = random_x(20_000, seed=6)
    x[19_990, 1] = -1
    source = put(s3, "landing", "in.parquet", write_x(tmp_path / "in.parquet", x))
    s3.put_object(Bucket="scored", Key="out.parquet", Body=b"yesterday's complete output")
    result = run_score(source, "s3://scored/out.parquet", "--model", model_path, "--quiet", "--batch-size", "1000")
    assert result.code == 65
    assert result.lines == ["error: s3://landing/in.parquet: row 19990: x[1] = -1 is not one of the model's "
                            "input values (0..10)"]
    assert objects(s3, "scored") == {"out.parquet": b"yesterday's complete output"}
    assert uploads(s3, "scored") == []


def _start_large_run(s3, tmp_path, model_path, output: str) -> subprocess.Popen:
    """A subprocess job with an output of many multipart parts, stopped once an upload is under way."""
    x = random_x(600_000, seed=7)
    source = put(s3, "landing", "big.parquet", write_x(tmp_path / "big.parquet", x))
    process = subprocess.Popen(
        [sys.executable, "-m", "score", source, output, "--model", model_path, "--quiet",
         "--batch-size", "2000"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    deadline = time.monotonic() + 60
    while not uploads(s3, "scored"):  # the job has begun a multipart upload: parts are in flight
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the job never started an upload: {process.communicate()}")
        time.sleep(0.02)
    return process


@pytest.mark.parametrize(("signal_number", "exit_code", "name"),
                         [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_a_signal_mid_upload_publishes_nothing_and_leaves_nothing(s3, tmp_path, model_path,
                                                                   signal_number, exit_code, name):
    process = _start_large_run(s3, tmp_path, model_path, "s3://scored/out/big.parquet")
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == exit_code, stderr
    assert stderr.splitlines() == [f"error: interrupted by {name}; no output was published"]
    assert objects(s3, "scored") == {}  # neither OUTPUT nor the hidden object
    assert uploads(s3, "scored") == []  # the hidden upload was closed and deleted


def test_sigkill_mid_upload_leaves_no_object_under_output(s3, tmp_path, model_path):
    process = _start_large_run(s3, tmp_path, model_path, "s3://scored/out/big.parquet")
    process.kill()
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert objects(s3, "scored") == {}
    # What a SIGKILL can leave: an upload that was never completed, under the hidden key only
    # (a bucket lifecycle rule reclaims it); never an object a reader could see.
    pending = uploads(s3, "scored")
    assert pending and all(key.startswith("out/.big.parquet.tmp-") for key in pending)


def test_the_endpoint_can_be_given_in_the_uri_instead(s3, s3_server, tmp_path, model_path, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    storage._bucket_filesystem.cache_clear()
    query = f"?endpoint_override={s3_server.removeprefix('http://')}&scheme=http"
    x = random_x(200, seed=8)
    put(s3, "landing", "day/part-0.parquet", write_x(tmp_path / "in.parquet", x))
    result = run_score(f"s3://landing/day{query}", f"s3://scored/day{query}", "--model", model_path, "--quiet")
    assert (result.code, result.stderr) == (0, "")
    assert set(objects(s3, "scored")) == {"day/part-0.parquet", "day/_SUCCESS"}
    assert_scored(read_object(s3, "scored", "day/part-0.parquet", tmp_path), model_path, x)


def test_a_delta_tables_folder_on_the_store_is_refused_without_the_extra(s3, tmp_path, model_path,
                                                                         monkeypatch):
    """One listing of the prefix finds the table's log: its dead files are never scored."""
    from score import delta

    monkeypatch.setattr(delta, "available", lambda: False)
    put(s3, "landing", "events/part-00000-old.parquet", write_x(tmp_path / "old.parquet", random_x(10, seed=1)))
    put(s3, "landing", "events/part-00000-new.parquet", write_x(tmp_path / "new.parquet", random_x(10, seed=2)))
    (tmp_path / "commit.json").write_text('{"add": {"path": "part-00000-new.parquet"}}\n')
    put(s3, "landing", "events/_delta_log/00000000000000000000.json", tmp_path / "commit.json")
    result = run_score("s3://landing/events", "s3://scored/events", "--model", model_path, "--quiet")
    assert result.code == 65, result.stderr
    assert result.lines == [
        "error: s3://landing/events: is a Delta Lake table (_delta_log/ at its root), not plain "
        "Parquet files: a table's folder also holds files the table no longer has, so it is never "
        "read as loose Parquet. Reading its live rows needs the delta extra (pip install -e "
        "'.[delta]'); or score a snapshot exported to plain Parquet (the table's live rows, for "
        "example with Spark, DuckDB or Polars), not the table's folder"]
    assert objects(s3, "scored") == {}


def test_a_delta_tables_snapshot_on_the_store_is_scored(s3, s3_server, tmp_path, model_path):
    """With the delta extra the job reads the table's live rows through delta-rs, with the
    job's own endpoint and credentials: the overwritten rows are not scored."""
    deltalake = pytest.importorskip("deltalake")
    from score import delta_log

    options = delta_log.storage_options("s3://landing/events")
    assert options["AWS_ENDPOINT_URL"] == s3_server and options["AWS_ALLOW_HTTP"] == "true"
    first, second = random_x(30, seed=1), random_x(20, seed=2)
    for x, mode in ((first, "overwrite"), (second, "overwrite")):
        table = pa.table({"x": pa.array(x.tolist(), pa.list_(pa.int64()))})
        deltalake.write_deltalake("s3://landing/events", table, mode=mode, storage_options=options)
    result = run_score("s3://landing/events", "s3://scored/events.parquet", "--model", model_path, "--quiet")
    assert (result.code, result.stderr) == (0, "")
    assert_scored(read_object(s3, "scored", "events.parquet", tmp_path), model_path, second)


def test_a_delta_table_on_the_store_is_written_and_appended_to_once(s3, tmp_path, model_path):
    """--output-format delta on a store: the job writes the data files through its own S3
    client and delta-rs commits them with the job's endpoint and credentials; a retried append
    with the same --txn-id adds nothing."""
    deltalake = pytest.importorskip("deltalake")
    from score import delta_log

    first, second = random_x(40, seed=3), random_x(25, seed=4)
    table = "s3://scored/lake/scores"
    for x, extra in ((first, ()), (second, ("--mode", "append", "--txn-id", "daily:2"))):
        day = write_x(tmp_path / f"day{len(x)}.parquet", x, day=pa.array([len(x)] * len(x)))
        result = run_score(day, table, "--model", model_path, "--quiet", "--output-format", "delta", *extra)
        assert (result.code, result.stderr) == (0, "")
    retried = run_score(tmp_path / "day25.parquet", table, "--model", model_path, "--quiet",
                        "--output-format", "delta", "--mode", "append", "--txn-id", "daily:2")
    assert (retried.code, retried.lines) == (0, [f"warning: {table}: transaction daily:2 is already "
                                                 f"committed (table version 1); nothing was published"])
    found = deltalake.DeltaTable(table, storage_options=delta_log.storage_options(table))
    assert (found.version(), found.transaction_version("daily")) == (1, 2)
    rows = delta_rows(found).sort_by("id")
    for x in (first, second):
        assert_scored(rows.filter(pc.equal(rows.column("day"), len(x))), model_path, x)
    data = sorted(key.rsplit("/", 1)[-1] for key in objects(s3, "scored") if key.endswith(".parquet"))
    assert data == sorted(uri.rsplit("/", 1)[-1] for uri in found.file_uris())  # no orphan
