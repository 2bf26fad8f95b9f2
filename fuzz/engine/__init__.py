"""The fuzzing engine: raw inputs decoded to ops (decode), random scripts (generate), the
structural mutator, the atheris harness and the campaign that runs it, the minimiser and
the storage of findings."""
