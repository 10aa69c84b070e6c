# One image for every part: the API (default), workers (`notify worker`) and the
# migration step (`notify migrate`). Production sets DATABASE_URL, REDIS_URL and the rest
# (see .env.example); the embedded PostgreSQL/Redis are not installed here.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    APP_ENV=production

WORKDIR /app

# Exactly what uv.lock pins (hashes checked), without the extras and the dev group;
# the dependencies first, so that a change of the code alone reuses their layer.
COPY pyproject.toml uv.lock ./
COPY scripts/uv_version.py ./scripts/
RUN pip install "uv==$(python scripts/uv_version.py)" \
    && uv sync --locked --no-dev --no-install-project --python python3.11

# `notify migrate` finds alembic.ini and migrations/ in the working folder.
COPY alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations

RUN uv sync --locked --no-dev --no-editable --python python3.11 \
    && pip uninstall --yes uv \
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent notify

USER notify

EXPOSE 8000
CMD ["notify", "api", "--host", "0.0.0.0", "--port", "8000"]
