import time

import pytest
from mlflow import MlflowClient

from components.platform import tracking
from pipelines.local.processes import free_ports


def test_the_latest_training_run_is_found_and_other_stages_get_a_record_of_their_own(mlflow_server):
    client = MlflowClient(mlflow_server)
    assert tracking.training_run(client, "tracking-none", "m") is None  # no such experiment yet
    first = tracking.start_training_run(client, "tracking", "m", "m", "onegen", {"train": {"optim": {"lr": 0.1}}})
    time.sleep(0.01)  # start times differ
    latest = tracking.start_training_run(client, "tracking", "m", "m", "onegen", {"train": {"optim": {"lr": 0.2}}})
    tracking.start_training_run(client, "tracking", "m-plain-lm", "m", "plain_lm", {})  # another run name
    found = tracking.training_run(client, "tracking", "m")
    assert found.info.run_id == latest != first and found.data.params == {"train.optim.lr": "0.2"}
    assert found.data.tags[tracking.STAGE_TAG] == "train" and found.data.tags[tracking.VARIANT_TAG] == "onegen"
    assert tracking.run_for(client, "tracking", "m", "index") == latest
    record = tracking.run_for(client, "tracking", "elsewhere", "index")  # a model trained elsewhere
    run = client.get_run(record)
    assert run.info.run_name == "elsewhere" and run.data.tags[tracking.STAGE_TAG] == "index" and run.info.status == "FINISHED"


def test_params_are_logged_in_batches_of_at_most_one_hundred(mlflow_server):
    client = MlflowClient(mlflow_server)
    params = {f"p{i}": i for i in range(250)}
    run_id = tracking.start_training_run(client, "tracking-many", "big", "big", "onegen", params)
    assert len(client.get_run(run_id).data.params) == 250


@pytest.mark.timeout(20)
def test_an_unreachable_server_is_named_at_once():
    (port,) = free_ports(1)
    started = time.perf_counter()
    with pytest.raises(tracking.TrackingError, match=f"http://127.0.0.1:{port} is unreachable"):
        tracking.check_reachable(f"http://127.0.0.1:{port}")
    assert time.perf_counter() - started < 10
    tracking.check_reachable("sqlite:///local.db")  # a local store needs no server
