"""Create the git-ignored local secrets files read by Airflow's LocalFilesystemBackend.

Holds the connection the jobs need (``spindle_warehouse``: where outputs are written, and the
credentials for that store). The password is random per machine; it is never passed to a job:
the job receives the connection id and resolves it itself (see spark_apps/common/secrets.py).
Existing files are kept, so a re-run does not rotate secrets under a running Airflow.
"""

import json
import os
import secrets
import sys
from pathlib import Path


def main(secrets_dir: str) -> None:
    folder = Path(secrets_dir)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    repo = Path(__file__).resolve().parent.parent
    home = Path(os.environ.get("SPINDLE_HOME", repo / ".spindle"))
    connections = folder / "connections.json"
    if not connections.exists():
        warehouse = {
            "conn_type": "fs",
            "description": "Where Spindle jobs write their outputs (local folder or s3a:// bucket).",
            "login": "spindle",
            "password": secrets.token_urlsafe(24),
            "extra": {"root": str(home / "warehouse")},
        }
        connections.write_text(json.dumps({"spindle_warehouse": warehouse}, indent=2))
        os.chmod(connections, 0o600)
    variables = folder / "variables.json"
    if not variables.exists():
        variables.write_text(json.dumps({"spindle_backend": "local"}, indent=2))
        os.chmod(variables, 0o600)


if __name__ == "__main__":
    main(sys.argv[1])
