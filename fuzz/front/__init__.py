"""The front: the `rmapfuzz` command line and the scale bench; the only code that prints."""
