"""S3 options from a Prefect Secret block reach s3fs, without any endpoint in the environment."""

import json
import os

import fsspec
import pytest


def test_secret_block_configures_s3(prefect_server, s3_endpoint, monkeypatch):
    import s3fs
    from prefect.blocks.system import Secret

    from clothret.storage import clear_s3_cache
    from tasks.storage import use_s3_block

    saved = dict(fsspec.config.conf.get("s3", {}))
    bucket = "block-test"
    s3fs.S3FileSystem().mkdir(bucket)
    fsspec.filesystem("s3").pipe_file(f"{bucket}/hello.txt", b"hi")
    for name in ("AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    fsspec.config.conf["s3"] = {}
    clear_s3_cache()
    try:
        Secret(value=json.dumps({"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"})).save(
            "clothret-s3-test", overwrite=True
        )
        use_s3_block("clothret-s3-test")
        assert fsspec.open(f"s3://{bucket}/hello.txt").open().read() == b"hi"
        assert "key" not in os.environ.get("FSSPEC_S3", "")  # credentials are not exported

        Secret(value="not json").save("clothret-s3-bad", overwrite=True)
        with pytest.raises(ValueError, match="clothret-s3-bad.*JSON object"):
            use_s3_block("clothret-s3-bad")
        use_s3_block(None)  # no block: nothing changes
    finally:
        fsspec.config.conf["s3"] = saved
        clear_s3_cache()
