"""The HTTP peer: the same account rules as eventledger, written the obvious way.

A FastAPI app over the `eventsourcing` library's `Application`, one uvicorn worker, one
process: what a team would build with a popular Python event-sourcing library. It serves
the subset of our transaction and accounting APIs the load generator drives, with the same
JSON shapes, so one load generator measures both:

    POST /accounts                    {"account_id", "currency", "overdraft_limit"?}
    POST /accounts/{id}/deposits      {"amount", "reference"?}
    POST /accounts/{id}/withdrawals   {"amount", "reference"?}   409 insufficient-funds
    POST /transfers                   {"from_account", "to_account", "amount"}
    POST /accounts/{id}/close         409 balance-not-zero
    GET  /accounts/{id}               {"account_id", "currency", "balance", ..., "version"}
    GET  /health

Run it: `python -m bench.peer_app --port P (--sqlite PATH | --postgres URL --schema S)
[--token-sha256 HEX]`.

Fair to the peer: handlers are plain `def`, so FastAPI runs them in its thread pool (the
library is synchronous); the repository caches aggregates (fast-forwarding them from the
store, so a command reads only newer events); a conflict of two concurrent commands on one
account is retried, never refused (our contract). Durable like ours: SQLite in WAL mode with
synchronous=FULL on every connection; PostgreSQL commits before it answers. Reads answer
from the event store itself, so `X-Min-Position` is always met and ignored.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
from typing import Annotated, Any
from uuid import UUID, uuid4, uuid5

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import RecordConflictError
from eventsourcing.sqlite import SQLiteConnection, SQLiteConnectionPool, SQLiteFactory
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

NAMESPACE = UUID("6f1d8a52-8a0c-4b8e-9d55-0b6f0c7d1e01")  # account id -> aggregate id
MAX_AMOUNT = 2**53 - 1
CONFLICT_RETRIES = 50  # contention alone never refuses a command


# -- the domain, as the library wants it ----------------------------------------------------


class Account(Aggregate):
    @event("Opened")
    def __init__(self, account_id: str, currency: str, overdraft_limit: int) -> None:
        self.account_id = account_id
        self.currency = currency
        self.overdraft_limit = overdraft_limit
        self.balance = 0
        self.closed = False

    @staticmethod
    def create_id(account_id: str, **_: Any) -> UUID:
        return uuid5(NAMESPACE, account_id)

    @event("Deposited")
    def deposit(self, transaction_id: str, amount: int, reference: str | None) -> None:
        self.balance += amount

    @event("Withdrawn")
    def withdraw(self, transaction_id: str, amount: int, reference: str | None) -> None:
        self.balance -= amount

    @event("Closed")
    def close(self) -> None:
        self.closed = True


class Refused(Exception):
    def __init__(self, status: int, slug: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail = status, slug, detail


class Ledger(Application[UUID]):
    """The account rules; every command retried on a version conflict."""

    def open(self, account_id: str, currency: str, overdraft_limit: int) -> int:
        account = Account(account_id=account_id, currency=currency, overdraft_limit=overdraft_limit)
        try:
            return self._save(account)
        except RecordConflictError:
            raise Refused(409, "account-exists", f"account {account_id} exists") from None

    def account(self, account_id: str) -> Account:
        try:
            account: Account = self.repository.get(Account.create_id(account_id))
        except AggregateNotFoundError:
            raise Refused(404, "account-not-found", f"no account {account_id}") from None
        return account

    def deposit(self, account_id: str, amount: int, reference: str | None) -> dict[str, Any]:
        for _ in range(CONFLICT_RETRIES):
            account = self._open_account(account_id)
            transaction_id = str(uuid4())
            account.deposit(transaction_id, amount, reference)
            try:
                position = self._save(account)
            except RecordConflictError:
                continue
            return _outcome(transaction_id, account, amount, position)
        raise Refused(503, "contention", "too many concurrent commands on this account")

    def withdraw(self, account_id: str, amount: int, reference: str | None) -> dict[str, Any]:
        for _ in range(CONFLICT_RETRIES):
            account = self._open_account(account_id)
            if account.balance - amount < -account.overdraft_limit:
                raise Refused(409, "insufficient-funds", f"balance {account.balance}")
            transaction_id = str(uuid4())
            account.withdraw(transaction_id, amount, reference)
            try:
                position = self._save(account)
            except RecordConflictError:
                continue
            return _outcome(transaction_id, account, amount, position)
        raise Refused(503, "contention", "too many concurrent commands on this account")

    def transfer(self, source: str, target: str, amount: int) -> dict[str, Any]:
        if source == target:
            raise Refused(422, "same-account", "from and to are the same account")
        for _ in range(CONFLICT_RETRIES):
            a, b = self._open_account(source), self._open_account(target)
            if a.currency != b.currency:
                raise Refused(409, "currency-mismatch", f"{a.currency} to {b.currency}")
            if a.balance - amount < -a.overdraft_limit:
                raise Refused(409, "insufficient-funds", f"balance {a.balance}")
            transaction_id = str(uuid4())
            a.withdraw(transaction_id, amount, None)
            b.deposit(transaction_id, amount, None)
            try:
                position = self._save(a, b)  # one transaction: both or neither
            except RecordConflictError:
                continue
            return {
                "transaction_id": transaction_id,
                "from_account": source,
                "to_account": target,
                "amount": amount,
                "from_balance": a.balance,
                "to_balance": b.balance,
                "position": position,
            }
        raise Refused(503, "contention", "too many concurrent commands on these accounts")

    def close_account(self, account_id: str) -> dict[str, Any]:
        for _ in range(CONFLICT_RETRIES):
            account = self._open_account(account_id)
            if account.balance != 0:
                raise Refused(409, "balance-not-zero", f"balance {account.balance}")
            account.close()
            try:
                position = self._save(account)
            except RecordConflictError:
                continue
            return {"account_id": account_id, "status": "closed", "position": position}
        raise Refused(503, "contention", "too many concurrent commands on this account")

    def _open_account(self, account_id: str) -> Account:
        account = self.account(account_id)
        if account.closed:
            raise Refused(409, "account-closed", f"account {account_id} is closed")
        return account

    def _save(self, *aggregates: Account) -> int:
        recordings = self.save(*aggregates)
        notification = recordings[-1].notification
        return int(notification.id) if notification is not None else 0


def _outcome(transaction_id: str, account: Account, amount: int, position: int) -> dict[str, Any]:
    return {
        "transaction_id": transaction_id,
        "account_id": account.account_id,
        "amount": amount,
        "balance": account.balance,
        "position": position,
    }


# -- durability: synchronous=FULL on every SQLite connection ----------------------------------


class _DurablePool(SQLiteConnectionPool):
    def _create_connection(self) -> SQLiteConnection:
        conn = super()._create_connection()
        conn.cursor().execute("PRAGMA synchronous = FULL")
        return conn


class DurableSQLiteFactory(SQLiteFactory):
    """eventsourcing's SQLite factory (it turns WAL on), with synchronous=FULL as ours."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        old = self.datastore.pool
        self.datastore.pool = _DurablePool(
            db_name=old.db_name, pool_size=48, max_overflow=0, lock_timeout=old.lock_timeout
        )
        old.close()


# -- HTTP -----------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class OpenAccount(_Strict):
    account_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    overdraft_limit: int = Field(default=0, ge=0, le=MAX_AMOUNT)


class Money(_Strict):
    amount: int = Field(ge=1, le=MAX_AMOUNT)
    reference: str | None = Field(default=None, max_length=256)


class Transfer(_Strict):
    from_account: str = Field(min_length=1, max_length=64)
    to_account: str = Field(min_length=1, max_length=64)
    amount: int = Field(ge=1, le=MAX_AMOUNT)


def _problem(status: int, slug: str, detail: str) -> JSONResponse:
    body = {"type": slug, "title": slug.replace("-", " "), "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def create_app(ledger: Ledger, token_sha256: str | None) -> FastAPI:
    def authorised(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
        if token_sha256 is None or request.url.path == "/health":  # /health as ours: open
            return
        token = (authorization or "").removeprefix("Bearer ")
        digest = hashlib.sha256(token.encode()).hexdigest()
        if not hmac.compare_digest(digest, token_sha256):
            raise Refused(401, "unauthenticated", "a valid bearer token is required")

    app = FastAPI(title="eventsourcing peer", dependencies=[Depends(authorised)])

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return _problem(exc.status, exc.slug, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _problem(422, "validation-error", str(exc.errors())[:500])

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "service": "peer"}

    @app.post("/accounts", status_code=201)
    def open_account(body: OpenAccount) -> dict[str, Any]:
        position = ledger.open(body.account_id, body.currency, body.overdraft_limit)
        return {"account_id": body.account_id, "currency": body.currency, "position": position}

    @app.post("/accounts/{account_id}/deposits", status_code=201)
    def deposit(account_id: str, body: Money) -> dict[str, Any]:
        return ledger.deposit(account_id, body.amount, body.reference)

    @app.post("/accounts/{account_id}/withdrawals", status_code=201)
    def withdraw(account_id: str, body: Money) -> dict[str, Any]:
        return ledger.withdraw(account_id, body.amount, body.reference)

    @app.post("/transfers", status_code=201)
    def transfer(body: Transfer) -> dict[str, Any]:
        return ledger.transfer(body.from_account, body.to_account, body.amount)

    @app.post("/accounts/{account_id}/close")
    def close(account_id: str) -> dict[str, Any]:
        return ledger.close_account(account_id)

    @app.get("/accounts/{account_id}")
    def get_account(account_id: str) -> dict[str, Any]:
        account = ledger.account(account_id)
        return {
            "account_id": account.account_id,
            "currency": account.currency,
            "balance": account.balance,
            "overdraft_limit": account.overdraft_limit,
            "status": "closed" if account.closed else "open",
            "version": account.version,
            "updated_at": account.modified_on.isoformat(),
        }

    return app


def ledger_env(*, sqlite: str | None, postgres: str | None, schema: str | None) -> dict[str, str]:
    """The library's settings: a durable store, and an aggregate cache that fast-forwards."""
    env = {"AGGREGATE_CACHE_MAXSIZE": "100000", "AGGREGATE_CACHE_FASTFORWARD": "y"}
    if sqlite:
        env |= {
            "PERSISTENCE_MODULE": "bench.peer_app:DurableSQLiteFactory",
            "SQLITE_DBNAME": sqlite,
            "SQLITE_LOCK_TIMEOUT": "10",
        }
    elif postgres:
        from bench.pg import connection_parts

        parts = connection_parts(postgres)
        env |= {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": parts.dbname,
            "POSTGRES_HOST": parts.host,
            "POSTGRES_PORT": str(parts.port),
            "POSTGRES_USER": parts.user,
            "POSTGRES_PASSWORD": parts.password,
            "POSTGRES_POOL_SIZE": "40",
            "POSTGRES_MAX_OVERFLOW": "8",
            "CREATE_TABLE": "y",
        }
        if schema:
            env["POSTGRES_SCHEMA"] = schema
    return env


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.peer_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sqlite", help="database file")
    parser.add_argument("--postgres", help="server URL")
    parser.add_argument("--schema", help="PostgreSQL schema (created by the caller)")
    parser.add_argument("--token-sha256", help="require this bearer token (hex SHA-256)")
    args = parser.parse_args(argv)
    if bool(args.sqlite) == bool(args.postgres):
        parser.error("give exactly one of --sqlite and --postgres")
    for key in [k for k in os.environ if k.startswith(("POSTGRES_", "SQLITE_", "PERSISTENCE"))]:
        del os.environ[key]  # only our settings reach the library
    ledger = Ledger(env=ledger_env(sqlite=args.sqlite, postgres=args.postgres, schema=args.schema))
    app = create_app(ledger, args.token_sha256)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
