"""Who may do what in the stack's MLflow: the users and their per-registered-model permissions.

    MLFLOW_TRACKING_URI=http://mlflow:5000 python -m stages.registry.access

MLflow's basic-auth permissions are per registered model (READ, EDIT, MANAGE), not per alias, and moving
an alias takes the same right as registering a version. So the rights follow the two registered models
of params.yaml's `mlflow` block:

- pipeline (CI pushes, `dvc repro`): EDIT on the candidates, where it registers and stages; READ on the
  served model, whose production it compares against. It cannot move `production`.
- deployer (cd.yml's `production` environment, `make promote`/`rollback`): MANAGE on both. Deleting an
  alias or a version tag takes MANAGE in MLflow 3.17, and a promotion clears `staging` on the
  candidates, a rollback a tag on the served model.
- api: READ on the served model, which it loads.

The admin (MLFLOW_ADMIN_PASSWORD, the one MLflow created at its first start) creates both registered
models before anyone else can: MLflow gives MANAGE to whoever creates one, and the pipeline must not
own the served model. Passwords come from the environment (.env); running again sets users, passwords
and grants to what they should be, so it is safe to run at every start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from stages.errors import StageError, run
from stages.params import Mlflow, load_params
from stages.tracking import tracking_uri

ADMIN = "admin"
MIN_PASSWORD_LENGTH = 12
# User -> the environment variable holding its password.
PASSWORDS = {
    "pipeline": "MLFLOW_PIPELINE_PASSWORD",
    "deployer": "MLFLOW_DEPLOYER_PASSWORD",
    "api": "MLFLOW_API_PASSWORD",
}


class AccessError(StageError):
    """The users or grants cannot be set up; the message says which and why."""


def grants(names: Mlflow) -> dict[str, dict[str, str]]:
    """User -> registered model -> permission. The design in one table (and in one place)."""
    return {
        "pipeline": {names.candidate_model_name: "EDIT", names.model_name: "READ"},
        "deployer": {names.model_name: "MANAGE", names.candidate_model_name: "MANAGE"},
        "api": {names.model_name: "READ"},
    }


def passwords(env: Mapping[str, str]) -> dict[str, str]:
    missing = [
        variable for variable in [*PASSWORDS.values(), "MLFLOW_ADMIN_PASSWORD"] if not env.get(variable)
    ]
    if missing:
        raise AccessError(f"set {', '.join(missing)} (.env): every MLflow user needs its own password")
    # MLflow refuses shorter ones; saying so here names the variable.
    short = [variable for variable in PASSWORDS.values() if len(env[variable]) < MIN_PASSWORD_LENGTH]
    if short:
        raise AccessError(f"{', '.join(short)}: MLflow needs at least {MIN_PASSWORD_LENGTH} characters")
    return {user: env[variable] for user, variable in PASSWORDS.items()}


def apply(uri: str, names: Mlflow, env: Mapping[str, str]) -> list[str]:
    """Create or update the users, the two registered models and the grants, as the admin. Returns one
    line per change or check, for the log."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    wanted = passwords(env)
    # The MLflow clients read the credentials from the environment at each request.
    os.environ["MLFLOW_TRACKING_USERNAME"] = ADMIN
    os.environ["MLFLOW_TRACKING_PASSWORD"] = env["MLFLOW_ADMIN_PASSWORD"]
    auth, registry = AuthServiceClient(uri), MlflowClient(tracking_uri=uri, registry_uri=uri)
    lines = []
    for model in (names.model_name, names.candidate_model_name):
        try:
            registry.create_registered_model(model)
            lines.append(f"created registered model {model}")
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            lines.append(f"registered model {model} exists")
    for user, password in wanted.items():
        try:
            auth.create_user(user, password)
            lines.append(f"created user {user}")
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            auth.update_user_password(user, password)
            lines.append(f"user {user} exists; password set from the environment")
    for user, models in grants(names).items():
        for model, permission in models.items():
            try:
                auth.grant_user_permission(user, "registered_model", model, permission)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                # A grant has no update call: replace it, so that a changed table takes effect.
                auth.revoke_user_permission(user, "registered_model", model)
                auth.grant_user_permission(user, "registered_model", model, permission)
            lines.append(f"{user}: {permission} on {model}")
    return lines


def main() -> None:
    for line in apply(tracking_uri(), load_params().mlflow, os.environ):
        print(f"access: {line}")


if __name__ == "__main__":
    run(main, "access")
