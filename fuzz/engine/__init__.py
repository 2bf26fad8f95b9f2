"""The fuzzing engine: raw inputs decoded to ops (decode), random scripts (generate), the
structural mutator, the atheris harness, one fuzzing process's session and the campaign
that runs it, the minimiser, the storage of findings and the seed corpus."""
