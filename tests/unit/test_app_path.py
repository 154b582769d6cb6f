"""The deployment routes on the path inside its application, whatever the application's route prefix."""

from runtime.serve.deployment import app_path


def test_the_handler_routes_on_the_path_inside_the_application():
    assert app_path({"path": "/v2/models/cnn/infer", "root_path": ""}) == "/v2/models/cnn/infer"
    assert app_path({"path": "/secured/v2/models/cnn/infer", "root_path": "/secured"}) == "/v2/models/cnn/infer"
    assert app_path({"path": "/secured", "root_path": "/secured"}) == "/"
    assert app_path({"path": "/v2/health/ready", "root_path": "/"}) == "/v2/health/ready"
