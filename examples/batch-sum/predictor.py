"""Sums lists of numbers, a batch at a time.

Each item is a list of numbers. predict() writes the sums of one batch to DEST/<batch_id>.json
(DEST is the job's config["dest"]); on_job_complete() adds up this job's batch files into
DEST/total.json. Files are written to a temporary name and renamed, so a batch that is run again
(delivery is at least once) replaces its file instead of being counted twice.
"""

import json
import os
import tempfile
from numbers import Number


def write_json_atomically(path, value):
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class PythonPredictor:
    def __init__(self, config, job_spec):
        self.dest = config["dest"]
        self.job_id = job_spec["job_id"]
        os.makedirs(self.dest, exist_ok=True)

    def predict(self, payload, batch_id):
        sums = []
        for i, item in enumerate(payload):
            if not isinstance(item, list) or not all(
                isinstance(x, Number) and not isinstance(x, bool) for x in item
            ):
                raise ValueError(f"item {i} of batch {batch_id} is not a list of numbers: {item!r}")
            sums.append(sum(item))
        write_json_atomically(
            os.path.join(self.dest, f"{batch_id}.json"),
            {"job_id": self.job_id, "batch_id": batch_id, "sums": sums},
        )

    def on_job_complete(self):
        total, count, batches = 0, 0, 0
        # Only this job's batches: their ids start with the job id. A rerun with the same dest
        # leaves the earlier job's files alone and does not count them.
        for name in sorted(os.listdir(self.dest)):
            if not (name.startswith(f"{self.job_id}-") and name.endswith(".json")):
                continue
            with open(os.path.join(self.dest, name)) as f:
                sums = json.load(f)["sums"]
            total += sum(sums)
            count += len(sums)
            batches += 1
        write_json_atomically(
            os.path.join(self.dest, "total.json"),
            {"job_id": self.job_id, "total": total, "count": count, "batches": batches},
        )
