"""``python -m mel``: the ``mel`` command (what a cluster job runs)."""

from mel.entrypoints.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
