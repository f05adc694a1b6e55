"""eventledger: an event-sourced, CQRS accounting ledger."""

__version__ = "0.1.0"
