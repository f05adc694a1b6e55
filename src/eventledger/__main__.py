"""`python -m eventledger`: the command line."""

from __future__ import annotations

from eventledger.cli import main

if __name__ == "__main__":
    main()
