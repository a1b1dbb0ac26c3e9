"""--progress-output: a job writes its own stages where a cloud task can read them."""

import json

from spark_apps.common import cli, job


def test_a_job_writes_its_stages_to_progress_output(spark, tmp_path):
    target = tmp_path / "progress" / "embed.try1.json"
    parser = cli.base_parser("t", "t")
    args = parser.parse_args(
        ["--input", "in", "--output", "out", "--progress-output", str(target), "--progress-interval", "0.2"]
    )

    def body(spark, args, warehouse, watch):
        import time

        rows = (
            spark.sparkContext.parallelize(range(1000), 3).map(lambda x: (x % 5, 1)).reduceByKey(lambda a, b: a + b, 2)
        )
        groups = len(rows.collect())
        time.sleep(0.5)  # at least one periodic write while the job runs
        assert len(rows.collect()) == groups  # a second job: its map stage is skipped (shuffle reused)
        return {"groups": groups}

    result = job.run_job("progress_test", args, body)
    assert result["groups"] == 5
    document = json.loads(target.read_text())
    assert document["app_id"] == spark.sparkContext.applicationId and document["final"] is True
    assert document["at"] >= document["started"] > 0
    assert all(set(s) >= {"stageId", "name", "numActiveTasks", "numFailedTasks"} for s in document["stages"])
    # two jobs of the shuffle: map stage (3 tasks) and reduce stage (2), the second job's map skipped
    stages = [(s["status"], s["numCompleteTasks"], s["numTasks"]) for s in document["stages"][-4:]]
    assert stages == [("COMPLETE", 3, 3), ("COMPLETE", 2, 2), ("SKIPPED", 0, 3), ("COMPLETE", 2, 2)], document
