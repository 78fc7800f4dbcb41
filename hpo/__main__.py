"""Run the CLI as ``python -m hpo``."""

from hpo.cli import main

raise SystemExit(main())
