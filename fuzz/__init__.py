"""rmapfuzz: a differential fuzzer for the kernel's batched rmap code (see README.md's layout).

Imports run one way: front -> engine -> judge -> script -> machine; the implementations
(reference/, batched/, a canary) are reached only through the kernel interface.
"""
