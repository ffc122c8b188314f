"""Local servers for the object stores gyrus reads besides S3: Azurite (Microsoft's Azure
Storage emulator, from npm) for az://, and gcp-storage-emulator (from PyPI) for gs://.

Both run on a free port of 127.0.0.1 for one test module and are stopped at its end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from e2e_helpers import free_port, stop_process, wait_until
from s3_helpers import port_open

ROOT = Path(__file__).resolve().parents[2]
AZURITE = os.environ.get("GYRUS_TEST_AZURITE", str(ROOT / ".tools/azurite/node_modules/.bin/azurite-blob"))

# Azurite's one built-in account and its well-known key (documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Process:
    """A server process with its log, stopped (terminate, then kill) by `stop`."""

    def __init__(self, cmd: list[str], log_path: Path, port: int, what: str):
        self.log_path = log_path
        log = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_until(
                lambda: self.proc.poll() is not None or port_open(port),
                60,
                what=lambda: f"{what} to listen on {port}\n{self.log()}",
            )
        except BaseException:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {self.proc.returncode}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)


class Azurite:
    """Azurite's blob service, with its data in `root`."""

    def __init__(self, root: Path):
        if not Path(AZURITE).is_file():
            raise RuntimeError(f"Azurite is missing ({AZURITE}); run scripts/setup-emulators.sh")
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"
        cmd = [AZURITE, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", str(root),
               "--skipApiVersionCheck", "--disableProductStyleUrl"]
        self.server = Process(cmd, root.parent / "azurite.log", self.port, "Azurite")
        from azure.storage.blob import BlobServiceClient

        self.client = BlobServiceClient.from_connection_string(
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    def container(self, name: str) -> str:
        self.client.create_container(name)
        return name

    def put(self, container: str, key: str, path: Path) -> None:
        with open(path, "rb") as f:
            self.client.get_blob_client(container, key).upload_blob(f, overwrite=True)

    def env(self, key: str = AZURITE_KEY) -> dict[str, str]:
        """What a user of this emulator sets: the account, its key and the endpoint."""
        return {
            "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
            "AZURE_STORAGE_ACCOUNT_KEY": key,
            "AZURE_STORAGE_ENDPOINT": self.endpoint,
        }

    def stop(self) -> None:
        self.server.stop()


class GcsEmulator:
    """gcp-storage-emulator in memory, with one bucket (tests/e2e/gcs_emulator.py)."""

    def __init__(self, log_dir: Path, bucket: str):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        script = Path(__file__).with_name("gcs_emulator.py")
        cmd = [sys.executable, str(script), str(self.port), bucket]
        self.server = Process(cmd, log_dir / "gcs-emulator.log", self.port, "gcp-storage-emulator")
        import requests

        self.http = requests.Session()
        self.http.trust_env = False

    def put(self, key: str, path: Path) -> None:
        """An upload through the JSON API, as Google's client libraries make it."""
        r = self.http.post(
            f"{self.endpoint}/upload/storage/v1/b/{self.bucket}/o",
            params={"uploadType": "media", "name": key},
            data=path.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
            timeout=30,
        )
        r.raise_for_status()

    def stop(self) -> None:
        self.http.close()
        self.server.stop()
