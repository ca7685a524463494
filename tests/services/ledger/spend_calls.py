"""The job and model call the crash tests reserve for, shared with the worker process
they SIGKILL."""

from __future__ import annotations

from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2
from agentrt.jobs.v1 import jobs_pb2

TENANT = "acme"
USAGE = common_pb2.Usage(input_tokens=120, output_tokens=80)
"""What the model call really used."""


def worker_job(name: str) -> jobs_pb2.Job:
    return jobs_pb2.Job(
        name=name, tenant=TENANT, principal="alice", spec=jobs_pb2.JobSpec(model="m1")
    )


def model_call() -> engine_pb2.CompleteRequest:
    request = engine_pb2.CompleteRequest(
        model="m1",
        messages=[common_pb2.Message(role=common_pb2.ROLE_USER, content="tell me a story")],
        idempotency_key="turn-1",
    )
    request.params.max_output_tokens = 500
    return request
