"""How the command line words what the typed client raises: one line, and what to do."""

from __future__ import annotations

from eventledger.cli.client import CliToken, ServiceAnswered, cli_error
from eventledger.client import TransportError
from eventledger.client.errors import problem_error

TOKEN = CliToken("a-token-of-sixteen-chars", "/data/tokens/cli.token")
NO_TOKEN = CliToken(None, "EVENTLEDGER_TOKEN is not set and there is no /data/tokens/cli.token")


def problem(status: int, type_: str, title: str, detail: str) -> dict[str, object]:
    return {"type": type_, "title": title, "status": status, "detail": detail}


def test_a_refusal_is_its_title_and_detail() -> None:
    exc = problem_error(409, problem(409, "insufficient-funds", "Insufficient funds", "no"))
    error = cli_error(exc, TOKEN)
    assert isinstance(error, ServiceAnswered) and error.status == 409
    assert (str(error), error.exit_code, error.problem_type) == (
        "Insufficient funds: no",
        1,
        "insufficient-funds",
    )


def test_a_401_says_which_token_was_sent_or_how_to_give_one() -> None:
    exc = problem_error(401, problem(401, "unauthenticated", "Authentication required", "send"))
    assert str(cli_error(exc, TOKEN)).endswith(
        "(the command line sends the token of /data/tokens/cli.token)"
    )
    assert str(cli_error(exc, NO_TOKEN)).endswith(
        "(EVENTLEDGER_TOKEN is not set and there is no /data/tokens/cli.token: set "
        "EVENTLEDGER_TOKEN)"
    )
    assert "a-token-of-sixteen-chars" not in str(cli_error(exc, TOKEN))


def test_a_command_whose_outcome_is_unknown_says_which_key_to_resend() -> None:
    exc = problem_error(503, problem(503, "stream-unavailable", "Stream unavailable", "later"))
    exc.idempotency_key = "k-1"
    assert str(cli_error(exc, TOKEN)) == (
        "Stream unavailable: later (retry safely with --idempotency-key k-1)"
    )
    lost = TransportError(
        "lost the connection to the transaction service at http://127.0.0.1:8001",
        service="transaction",
        url="http://127.0.0.1:8001",
        maybe_applied=True,
        idempotency_key="k-2",
    )
    assert str(cli_error(lost, TOKEN)).endswith("(retry safely with --idempotency-key k-2)")


def test_a_read_or_a_request_never_sent_has_no_key_to_resend() -> None:
    read = problem_error(503, problem(503, "not-caught-up", "Not caught up", "retry shortly"))
    assert str(cli_error(read, TOKEN)) == "Not caught up: retry shortly"
    unsent = TransportError(
        "cannot reach the transaction service at http://127.0.0.1:8001",
        service="transaction",
        url="http://127.0.0.1:8001",
        idempotency_key="k-3",
    )
    assert str(cli_error(unsent, TOKEN)) == (
        "cannot reach the transaction service at http://127.0.0.1:8001"
    )
