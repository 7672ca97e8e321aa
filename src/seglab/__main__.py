"""``python -m seglab`` is the ``seglab`` command (what ``torchrun -m seglab`` launches)."""

from seglab.apps.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
