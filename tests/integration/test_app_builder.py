"""Ray Serve accepts `runtime.serve.app:build_app` as the application builder of a config (no cluster needed
to bind)."""

from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

from runtime.serve.app import build_app


def test_ray_serve_accepts_build_app_as_the_builder_of_a_config(cnn_repository):
    args = {"repository": str(cnn_repository), "models": [{"name": "cnn"}]}
    assert isinstance(call_user_app_builder_with_args_if_necessary(build_app, args), Application)
