"""The judge: runs a script on the reference and an implementation (runner), and says what
does not hold: differing states (compare), the invariants of SPEC §6 (oracles), a script's
`expect` lines (expects) and the data words user space wrote (shadow)."""
