"""The batched, numpy-vectorised implementation (issue: "The batched implementation")."""
