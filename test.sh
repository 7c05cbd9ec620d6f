#!/usr/bin/env bash
# The whole test suite: unit and integration tests (cargo test, storage tests on SQLite and
# PostgreSQL), the XSD validator self-test, and the slixmpp conformance suite on both
# databases (with Converse.js in headless Chromium). Installs what it needs (Debian packages,
# the browser test's npm packages, a Python venv) on first run.
set -euo pipefail
cd "$(dirname "$0")"

scripts/install-deps
PG_ADMIN_URL=$(scripts/pg-setup | tail -n 1)
export STARLING_TEST_POSTGRES_URL="$PG_ADMIN_URL"
export STARLING_TEST_REQUIRE_POSTGRES=1

echo "== cargo test"
cargo test --all-targets

echo "== schemas: validator self-test, then live server output validated against schemas/"
python3 tests/schema_check/test_validate.py
python3 tests/schema_check/capture.py --quiet

echo "== conformance (slixmpp) on SQLite and PostgreSQL"
CONF_PG_ADMIN_URL="$PG_ADMIN_URL" conformance/run
