"""Small files next to a job's outputs (manifest.json, the latest pointer, a PNG), read and
written through the Hadoop FileSystem of the Spark session: the same resolution as the job's
Parquet paths, so local folders, ``file://``, HDFS and ``s3a://`` all work from the driver."""

import hashlib
import json


def _fs_path(spark, path):
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    return hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hadoop_path


def exists(spark, path):
    fs, hadoop_path = _fs_path(spark, path)
    return bool(fs.exists(hadoop_path))


def read_bytes(spark, path):
    """The file's bytes, or None when it does not exist."""
    fs, hadoop_path = _fs_path(spark, path)
    if not fs.exists(hadoop_path):
        return None
    stream = fs.open(hadoop_path)
    try:
        return bytes(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def write_bytes(spark, path, data):
    """Write (overwrite) a whole file; parent folders are created."""
    fs, hadoop_path = _fs_path(spark, path)
    stream = fs.create(hadoop_path, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def read_json(spark, path):
    data = read_bytes(spark, path)
    return None if data is None else json.loads(data.decode("utf-8"))


def write_json(spark, path, obj):
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    write_bytes(spark, path, text.encode("utf-8"))


def files_fingerprint(spark, path):
    """``{"files", "bytes", "fingerprint"}`` of every file under ``path`` (a file or a folder):
    ``sha256:`` of the sorted ``name size mtime`` lines. Any rewrite of the input changes it."""
    fs, hadoop_path = _fs_path(spark, path)
    lines, total = [], 0
    listing = fs.listFiles(hadoop_path, True)
    while listing.hasNext():
        status = listing.next()
        name = status.getPath().toString()
        if status.getPath().getName().startswith(("_", ".")):  # _SUCCESS, .crc files
            continue
        lines.append(f"{name}\t{status.getLen()}\t{status.getModificationTime()}")
        total += status.getLen()
    digest = hashlib.sha256("\n".join(sorted(lines)).encode("utf-8")).hexdigest()
    return {"files": len(lines), "bytes": total, "fingerprint": "sha256:" + digest}


def delete(spark, path):
    """Remove a file or a folder (recursively); False when there was nothing to remove."""
    fs, hadoop_path = _fs_path(spark, path)
    return bool(fs.delete(hadoop_path, True))
