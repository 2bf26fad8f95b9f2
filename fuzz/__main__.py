"""python -m fuzz: the rmapfuzz command line."""

from fuzz.front.cli import main

raise SystemExit(main())
