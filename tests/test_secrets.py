"""No secret in any output: a DSN password, an S3 secret key and a Trigger.dev key are planted
in the config of a real `pipemon serve`; logs (at debug level), /metrics, /, /health and the
error messages of failing sources must not contain any of them."""

from __future__ import annotations

import pytest

from testkit.app import queue_source
from testkit.fake_trigger import FakeTrigger
from testkit.net import free_port, http_get, wait_until
from testkit.processes import Exporter
from testkit.s3 import Moto, s3_client

DSN_PASSWORD = "Pg-pl4nted-Secr3t"
S3_SECRET = "S3-pl4nted-SecretAccessKey"
TRIGGER_KEY = "tr_prod_pl4ntedTriggerKey"
WRONG_TRIGGER_KEY = "tr_prod_pl4ntedWrongKey"
SECRETS = (DSN_PASSWORD, S3_SECRET, TRIGGER_KEY, WRONG_TRIGGER_KEY)


@pytest.mark.postgres
@pytest.mark.e2e
def test_no_secret_in_any_output(tmp_path, pg_dsn, services):
    moto = Moto()
    moto.start()
    trigger = FakeTrigger(TRIGGER_KEY).start()
    try:
        client = s3_client(moto.url)
        client.create_bucket(Bucket="secrets-media",
                             CreateBucketConfiguration={"LocationConstraint": "auto"})
        client.close()
        storage = {"kind": "storage", "bucket": "secrets-media", "access_key_id": "AKIAPIPEMONTEST",
                   "secret_access_key": S3_SECRET, "interval": "1s", "timeout": "1s"}
        exporter = services(Exporter(tmp_path / "exporter", [
            queue_source(f"{pg_dsn} password={DSN_PASSWORD}", interval="1s", timeout="1s"),
            queue_source(f"postgresql://postgres:{DSN_PASSWORD}@127.0.0.1:{free_port()}/x",
                         name="unreachable", interval="1s", timeout="1s"),
            {**storage, "name": "r2", "endpoint_url": moto.url},
            {**storage, "name": "r2-gone", "endpoint_url": f"http://127.0.0.1:{free_port()}"},
            {"name": "trigger", "kind": "trigger_dev", "base_url": trigger.url,
             "secret_key": TRIGGER_KEY, "interval": "1s", "timeout": "1s"},
            {"name": "trigger-denied", "kind": "trigger_dev", "base_url": trigger.url,
             "secret_key": WRONG_TRIGGER_KEY, "interval": "1s", "timeout": "1s"},
        ], extra_args=["--log.level", "debug", "--log.format", "json"]))
        wait_until(lambda: '"consecutive_failures": 2' in http_get(exporter.url + "/health")[1],
                   30, "the failing sources to fail twice")
        outputs = {path: http_get(exporter.url + path)[1]
                   for path in ("/", "/health", "/metrics")}
        health = outputs["/health"]
        for reason in ('"reason": "connect"', '"reason": "auth"'):
            assert reason in health, health  # the failures happened and are reported
        assert 'pipemon_storage_probe_success{bucket="secrets-media",source="r2"} 1.0' in \
            outputs["/metrics"]
    finally:
        trigger.stop()
        moto.reset()  # moto servers share the process's state: leave no bucket behind
        moto.stop()
    exporter.stop()
    outputs["log"] = exporter.log()
    for where, text in outputs.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} leaked in {where}"
