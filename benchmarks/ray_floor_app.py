"""What Ray Serve alone costs a request: a deployment that reads the body and answers a fixed response of an
inference answer's size, nothing else. `python -m benchmarks overhead` serves it beside trtserve, behind the
same ingress with the same settings (access log off, one replica, one CPU), so that a request's CPU in the
trtserve replica splits into Ray Serve's part (this) and trtserve's own (the rest)."""

from __future__ import annotations

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

APP = "floor"  # the application's name and route prefix in the overhead benchmark's Serve config
# About the size of cnn's JSON answer (10 logits with their names): the response costs what ours would.
ANSWER = (
    b'{"model_name":"cnn","model_version":"1","outputs":[{"name":"logits","datatype":"FP32","shape":[1,10],'
    b'"data":[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8,0.9,-1.0]}]}'
)


@serve.deployment(
    name="floor",
    max_ongoing_requests=512,
    ray_actor_options={"num_cpus": 0},
    logging_config={"enable_access_log": False},
)
class RayFloor:
    async def __call__(self, request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")


def build(args: dict) -> serve.Application:
    return RayFloor.bind()
