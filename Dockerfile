# One image for every part: the API (default), workers (`notify worker`) and the
# migration step (`notify migrate`). Production sets DATABASE_URL, REDIS_URL and the rest
# (see .env.example); the embedded PostgreSQL/Redis are not installed here.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    APP_ENV=production

WORKDIR /app

# `notify migrate` finds alembic.ini and migrations/ in the working folder.
COPY pyproject.toml alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations

RUN pip install . \
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent notify

USER notify

EXPOSE 8000
CMD ["notify", "api", "--host", "0.0.0.0", "--port", "8000"]
