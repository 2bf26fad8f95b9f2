"""The real kernel as the judge: op scripts on Linux arm64 under qemu, compared with the model op by op.

`runtime.c` runs in the guest (or as an exported reproducer); `realise` turns
scripts into its ops; `model` runs them on the model; `observe` projects both
sides to the same observations; `deviations` names the known simplifications;
`guest` fetches the kernel, builds the initramfs and boots; `bridge` judges.
"""
