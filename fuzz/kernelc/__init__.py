"""The kernel's own C for `--impl kernel-c`: a tree (source), its rmap helpers taken out verbatim
(extract), compiled with the one shim header and the glue into a cached library (build)."""
