"""Which database errors mean "try the same work again shortly"."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError

from app.db.session import transient_database_error


class ServerError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def dbapi_error(sqlstate: str, *, invalidated: bool = False) -> DBAPIError:
    return DBAPIError("SELECT 1", {}, ServerError(sqlstate), connection_invalidated=invalidated)


class TestDatabaseUnavailable:
    @pytest.mark.parametrize(
        "error",
        [
            ConnectionRefusedError(),
            InterfaceError("SELECT 1", {}, Exception("connection is closed")),
            dbapi_error("57P03"),  # the database system is starting up
            dbapi_error("57P01"),  # terminating connection due to administrator command
            dbapi_error("08006"),  # connection failure
            dbapi_error("40P01"),  # deadlock detected
            dbapi_error("XX000", invalidated=True),
        ],
    )
    def test_a_server_away_or_restarting_or_a_deadlock(self, error: BaseException) -> None:
        assert transient_database_error(error)

    @pytest.mark.parametrize(
        "error",
        [
            dbapi_error("23505"),
            IntegrityError("INSERT", {}, ServerError("23505")),
            dbapi_error("42P01"),
            ValueError("not a database error"),
        ],
    )
    def test_a_mistake_is_not_retried(self, error: BaseException) -> None:
        assert not transient_database_error(error)
