"""Building blocks shared by the jobs: session, CLI, I/O, secrets, models, metrics."""
